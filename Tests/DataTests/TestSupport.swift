import Foundation
import XCTest

/// A fresh directory under the system temporary folder, removed on deinit.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "efqat-data-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writes `bytes` to `name` and returns the file's path.
    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = path + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return file
    }

    @discardableResult
    func write(_ name: String, text: String) throws -> String {
        try write(name, Array(text.utf8))
    }
}

/// Runs `body`, which must throw an error of type `E`, and returns it.
func expectError<E: Error>(
    _ type: E.Type, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void
) -> E? {
    do {
        try body()
        XCTFail("expected an error", file: file, line: line)
    } catch let error as E {
        return error
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
    }
    return nil
}

/// An IDX file: big-endian magic and dimensions, then the payload.
func idx(magic: UInt32, dimensions: [UInt32], payload: [UInt8]) -> [UInt8] {
    let header = ([magic] + dimensions).flatMap { value in
        (0..<4).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
    return header + payload
}

/// The repository's root folder (this file is Tests/DataTests/TestSupport.swift).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()  // DataTests
    .deletingLastPathComponent()  // Tests
    .deletingLastPathComponent().path

/// Runs `arguments` (the program looked up on PATH) with `environment`
/// (the test process's when nil); returns its standard output, and fails
/// with its standard error if it exits non-zero.
@discardableResult
func runTool(_ arguments: [String], environment: [String: String]? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    if let environment { process.environment = environment }
    let output = Pipe(), errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ToolFailure(description: "\(arguments.joined(separator: " ")) exited with status "
                          + "\(process.terminationStatus): \(String(decoding: errorData, as: UTF8.self))")
    }
    return String(decoding: outputData, as: UTF8.self)
}

struct ToolFailure: Error, CustomStringConvertible {
    let description: String
}

/// `bytes` compressed by the gzip program (without a name or time stamp).
func gzipped(_ bytes: [UInt8]) throws -> [UInt8] {
    let directory = try TemporaryDirectory()
    let file = try directory.write("data", bytes)
    try runTool(["gzip", "-n", file])
    return Array(try Data(contentsOf: URL(fileURLWithPath: file + ".gz")))
}

/// Fails the test (rather than skipping it): the real data is part of the
/// setup that launch/test.sh runs.
struct MissingDataFile: Error, CustomStringConvertible {
    let path: String
    let setup: String
    var description: String { "\(path) is missing: run \(setup) first" }
}
