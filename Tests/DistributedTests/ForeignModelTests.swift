import Foundation
import XCTest

/// `--arch NAME --model FILE` with a state_dict that another program wrote
/// (no efqat metadata, as `safetensors.torch.save_file(model.state_dict())`
/// gives): it loads strictly, by torchvision's names and shapes, and
/// computes what the network that saved it computed; a file with an extra
/// or a missing tensor, or of another architecture, is refused in one line.
final class ForeignModelTests: JobTestCase {
    let architecture = ["--arch", "resnet18", "--width", "0.125"]

    func options(output: String) throws -> [String] {
        architecture + ["--data-dir", try Locations.mnistFolder(), "--output", output, "--seed", "5",
                        "--train-samples", "512", "--batch-size", "64", "--fp32-epochs", "1", "--qat-epochs", "0",
                        "--threads", "1", "--log-every", "0"]
    }

    /// Rewrites `source`'s tensors as a plain safetensors file (no
    /// metadata), dropping `drop` and adding `extra` (name: zeros of 4).
    func plainStateDict(from source: String, to target: String, drop: String? = nil, extra: String? = nil) throws {
        let script = """
            import sys
            import numpy as np
            from safetensors.numpy import load_file, save_file
            tensors = load_file(sys.argv[1])
            drop, extra = sys.argv[3], sys.argv[4]
            tensors.pop(drop, None)
            if extra:
                tensors[extra] = np.zeros(4, dtype=np.float32)
            save_file(tensors, sys.argv[2])
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, source, target, drop ?? "", extra ?? ""]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationStatus, 0, "python3 with numpy and safetensors is needed: \(message)")
    }

    func testAStateDictWithoutMetadataLoadsStrictlyAndComputesTheSameFunction() throws {
        let trained = try Jobs.single(try options(output: "\(folder)/trained"), marker: folder, folder: folder, timeout: 300)
        try assertSucceeded(trained)
        let accuracy = try XCTUnwrap(summaryQATAccuracy(trained.stdout, rows: ["FP32 "]), trained.report)
        let fp32 = "\(folder)/trained/fp32.safetensors"

        let plain = "\(folder)/state_dict.safetensors"
        try plainStateDict(from: fp32, to: plain)
        let loaded = try Jobs.single(try options(output: "\(folder)/loaded") + ["--model", plain],
                                     marker: folder, folder: folder, timeout: 120)
        try assertSucceeded(loaded)
        XCTAssertEqual(loaded.occurrences(of: "loaded strictly as resnet18 x0.125, 1 input channel(s), 10 classes"), 1,
                       loaded.report)
        XCTAssertEqual(summaryQATAccuracy(loaded.stdout, rows: ["FP32 (given)"]), accuracy, loaded.report)

        let cases: [(name: String, drop: String?, extra: String?, arguments: [String], message: String)] = [
            ("extra tensor", nil, "fc.scale", [], "tensor fc.scale is not in a resnet18 x0.125"),
            ("missing tensor", "layer2.1.bn1.running_var", nil, [],
             "tensor layer2.1.bn1.running_var of a resnet18 x0.125, 1 input channel(s), 10 classes model is missing"),
            ("another architecture", nil, nil, ["--arch", "resnet50"], "tensor layer1.0.conv1.weight has shape [8, 8, 3, 3]"),
        ]
        for (index, test) in cases.enumerated() {
            let file = "\(folder)/case-\(index).safetensors"
            try plainStateDict(from: fp32, to: file, drop: test.drop, extra: test.extra)
            let job = try Jobs.single(try options(output: "\(folder)/case-\(index)") + ["--model", file] + test.arguments,
                                      marker: folder, folder: folder, timeout: 120)
            XCTAssertNotEqual(job.status, 0, "\(test.name): must fail\n\(job.report)")
            XCTAssertEqual(job.occurrences(of: test.message), 1, "\(test.name): one clear message\n\(job.report)")
            XCTAssertEqual(job.occurrences(of: "error"), 1, "\(test.name): one error line\n\(job.report)")
        }
    }
}
