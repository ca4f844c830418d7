// swift-tools-version:6.0
import PackageDescription

/// Module graph (dependencies point one way):
///
///   CMPI ─► Distributed ─┐
///   COpenBLAS ─► Kernels ─► Layers ─► Quantization ─► Training ─► efqat-train
///   Layers ─► EfQAT ─► Training
///   CZlib ─► Data; Data, Checkpoint ─► Training
///   Kernels, Layers, Distributed, Checkpoint ─► Genie ─► Training (zero-shot), efqat-train
let package = Package(
    name: "efqat-train",
    products: [
        .executable(name: "efqat-train", targets: ["EfqatTrain"]),
        .executable(name: "efqat-bench", targets: ["EfqatBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Native libraries, reached through pkg-config.
        .systemLibrary(name: "COpenMPI", pkgConfig: "ompi",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        // Gzip decompression of data files (Fashion-MNIST ships gzipped).
        .systemLibrary(name: "CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        // Thin C shim: Open MPI's handles are macros Swift cannot import.
        .target(name: "CMPI", dependencies: ["COpenMPI"]),

        .target(name: "Kernels", dependencies: ["COpenBLAS"]),
        .target(name: "Layers", dependencies: ["Kernels"]),
        .target(name: "Quantization", dependencies: ["Kernels", "Layers", "Distributed"]),
        .target(name: "Distributed", dependencies: ["CMPI"]),
        .target(name: "EfQAT", dependencies: ["Kernels", "Layers", "Distributed"]),
        .target(name: "Checkpoint"),
        .target(name: "Data", dependencies: ["Kernels", "CZlib"]),
        .target(name: "Training", dependencies: [
            "Kernels", "Layers", "Quantization", "EfQAT", "Distributed", "Checkpoint", "Data", "Genie",
        ]),
        .target(name: "Genie", dependencies: ["Kernels", "Layers", "Distributed", "Checkpoint"]),
        .executableTarget(name: "EfqatTrain", dependencies: [
            "Training", "EfQAT", "Genie",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "EfqatBench", dependencies: [
            "Training", "EfQAT", "Distributed", "Checkpoint", "Quantization", "Kernels", "Layers",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "DataTests", dependencies: ["Data"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint"]),
        .testTarget(name: "DistributedTests", dependencies: ["Checkpoint", "Data"]),
        .testTarget(name: "TrainingTests", dependencies: [
            "Checkpoint", "Data", "Distributed", "EfQAT", "Kernels", "Layers", "Quantization", "Training",
        ]),
        .testTarget(name: "LayersTests", dependencies: ["Kernels", "Layers"]),
        .testTarget(name: "GenieTests", dependencies: ["Checkpoint", "Distributed", "Genie", "Kernels", "Layers"]),
        .testTarget(name: "QuantizationTests", dependencies: ["Kernels", "Layers", "Quantization", "Distributed"]),
    ]
)
