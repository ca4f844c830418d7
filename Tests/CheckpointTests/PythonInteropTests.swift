import Checkpoint
import Foundation
import XCTest

/// Checkpoints must open in Python's `safetensors`, and its files in ours.
/// These tests fail, rather than skip, without it: the project's setup
/// installs it (`pip install safetensors numpy`).
final class PythonInteropTests: CheckpointTestCase {
    func testPythonLoadsOurFileAndVerifiesTheChecksum() throws {
        guard try pythonHasSafetensors() else { return }
        let target = path("model.safetensors")
        try sampleCheckpoint().write(to: target)

        try runPython("""
            import sys, zlib
            import numpy as np
            from safetensors import safe_open
            from safetensors.numpy import load_file

            path = sys.argv[1]
            tensors = load_file(path)
            expected = {
                "conv1.weight": ("float32", (2, 3)), "conv1.bias": ("float64", (3,)),
                "step": ("int64", ()), "bn.num_batches_tracked": ("int32", (2, 2)),
                "mask": ("uint8", (5,)), "empty": ("float32", (0, 4)), "fc.scale": ("int64", (1,)),
            }
            assert {name: (str(t.dtype), t.shape) for name, t in tensors.items()} == expected, tensors
            assert tensors["conv1.weight"][1, 0] == 3.25
            assert np.isinf(tensors["conv1.weight"][1, 2])
            assert tensors["conv1.bias"][2] == np.pi
            assert tensors["step"] == 12345678901234
            assert tensors["bn.num_batches_tracked"].tolist() == [[-2**31, -1], [0, 2**31 - 1]]
            assert tensors["mask"].tolist() == [0, 1, 2, 254, 255]

            with safe_open(path, framework="np") as f:
                metadata = f.metadata()
            assert metadata["epoch"] == "3" and metadata["efqat.format"] == "1", metadata
            assert metadata["note"] == 'héllo "quoted" \\\\ a/b\\ttab', metadata

            data = open(path, "rb").read()
            header_length = int.from_bytes(data[:8], "little")
            assert (8 + header_length) % 8 == 0
            crc = format(zlib.crc32(data[8 + header_length:]), "08x")
            assert metadata["efqat.crc32"] == crc, (metadata["efqat.crc32"], crc)
            """, arguments: [target])
    }

    func testWeLoadAFileWrittenByPython() throws {
        guard try pythonHasSafetensors() else { return }
        let target = path("from-python.safetensors")
        try runPython("""
            import sys
            import numpy as np
            from safetensors.numpy import save_file
            save_file({
                "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
                "fc.bias": np.array([-1.5, 2.5], dtype=np.float64),
                "labels": np.array([3, -4], dtype=np.int64),
            }, sys.argv[1], metadata={"source": "python"})
            """, arguments: [target])

        let file = try SafeTensorsFile.read(from: target)
        XCTAssertEqual(file.metadata, ["source": "python"])
        XCTAssertEqual(file["fc.weight"]?.shape, [2, 3])
        XCTAssertEqual(try file["fc.weight"]?.values(as: Float.self), [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(try file["fc.bias"]?.values(as: Double.self), [-1.5, 2.5])
        XCTAssertEqual(try file["labels"]?.values(as: Int64.self), [3, -4])
    }

    /// Fails the test, saying how to fix it, when safetensors is missing.
    private func pythonHasSafetensors() throws -> Bool {
        let (status, output) = try python(["-c", "import safetensors.numpy, numpy"])
        guard status == 0 else {
            XCTFail("python3 with safetensors and numpy is needed: run `pip install safetensors numpy`\n\(output)")
            return false
        }
        return true
    }

    private func runPython(_ script: String, arguments: [String],
                           file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, output) = try python(["-c", script] + arguments)
        XCTAssertEqual(status, 0, "Python check failed:\n\(output)", file: file, line: line)
    }

    /// Runs `python3` with `arguments`; returns its exit status and its
    /// stdout and stderr together.
    private func python(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        // Read before waiting, so a chatty process cannot fill the pipe and stall.
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}
