import Data
import Foundation
import XCTest

/// The per-user data cache: efqat-train's default data folders, and the
/// same rule in launch/env.sh.
final class DataCacheTests: XCTestCase {
    private func root(_ environment: [String: String]) -> String {
        DataCache.root { environment[$0] }
    }

    func testEnvironmentDecidesTheCacheFolder() {
        XCTAssertEqual(root(["EFQAT_CACHE": "/data/efqat", "XDG_CACHE_HOME": "/xdg", "HOME": "/home/a"]),
                       "/data/efqat")
        XCTAssertEqual(root(["XDG_CACHE_HOME": "/xdg", "HOME": "/home/a"]), "/xdg/efqat-train")
        XCTAssertEqual(root(["HOME": "/home/a"]), "/home/a/.cache/efqat-train")
        // Empty variables count as unset, as in the shell's ${NAME:-default}.
        XCTAssertEqual(root(["EFQAT_CACHE": "", "XDG_CACHE_HOME": "", "HOME": "/home/a"]),
                       "/home/a/.cache/efqat-train")
        // Without HOME, the account's home folder.
        XCTAssertTrue(root([:]).hasSuffix("/.cache/efqat-train"), root([:]))
    }

    func testEachDataSetHasItsFolder() {
        let environment = ["EFQAT_CACHE": "/c"]
        let folders = DatasetFormat.allCases.map { DataCache.directory(for: $0) { environment[$0] } }
        XCTAssertEqual(folders, ["/c/mnist", "/c/mnist", "/c/fashion-mnist", "/c/cifar10"])
    }

    /// launch/env.sh exports the folder that efqat-train computes, so that
    /// setup-data.sh fills the folder the binary reads.
    func testShellScriptsUseTheSameFolder() throws {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let environments: [[String: String]] = [
            ["HOME": "/home/a"],
            ["HOME": "/home/a", "XDG_CACHE_HOME": "/xdg"],
            ["HOME": "/home/a", "XDG_CACHE_HOME": "", "EFQAT_CACHE": "/data/efqat"],
            [:],
        ]
        for environment in environments {
            let shell = try runTool(
                ["bash", "-c", "source \"$0\" && printf %s \"$EFQAT_CACHE\"", repositoryRoot + "/launch/env.sh"],
                environment: environment.merging(["PATH": path]) { mine, _ in mine })
            XCTAssertEqual(shell, root(environment), "environment \(environment)")
        }
    }
}
