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
