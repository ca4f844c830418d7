#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The per-user data cache that `launch/setup-data.sh` fills and the
/// trainer reads by default, so that a job finds its data from any folder:
/// `$EFQAT_CACHE` if set, else `${XDG_CACHE_HOME:-$HOME/.cache}/efqat-train`.
/// `launch/env.sh` (`efqat_default_cache`) applies the same rule.
public enum DataCache {
    /// The cache folder under `environment` (a variable's value, or nil if
    /// it is unset); an empty variable counts as unset, as in the shell's
    /// `${NAME:-default}`.
    public static func root(environment: (String) -> String? = processEnvironment) -> String {
        func value(_ name: String) -> String? { environment(name).flatMap { $0.isEmpty ? nil : $0 } }
        if let cache = value("EFQAT_CACHE") { return cache }
        let base = value("XDG_CACHE_HOME") ?? (value("HOME") ?? accountHome() ?? "") + "/.cache"
        return base + "/efqat-train"
    }

    /// The folder of `dataset` in the cache: `mnist` for mnist5k and
    /// mnist-idx, else the data set's own name (`fashion-mnist`, `cifar10`).
    public static func directory(
        for dataset: DatasetFormat, environment: (String) -> String? = processEnvironment
    ) -> String {
        path(dataset.cacheFolder, in: root(environment: environment))
    }

    /// This process's environment variable `name`.
    public static func processEnvironment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// The home folder of the user running this process, when HOME is unset.
    private static func accountHome() -> String? {
        guard let account = getpwuid(getuid()), let home = account.pointee.pw_dir else { return nil }
        return String(cString: home)
    }
}

extension DatasetFormat {
    /// This data set's folder in the data cache (see `DataCache`).
    public var cacheFolder: String {
        switch self {
        case .mnist5k, .mnistIDX: "mnist"
        case .fashionMNIST, .cifar10: rawValue
        }
    }
}
