fn main() {
    limit_malloc_arenas();
    std::process::exit(fleetsync::cli::main());
}

/// At most two glibc malloc arenas, unless the operator set
/// `MALLOC_ARENA_MAX` themselves. glibc gives each busy thread its own arena
/// (up to 8 per core) and hands little of a freed arena back, so a node
/// under churn sat at 4-5 times its live heap (issue 11 soak: 11 MiB of
/// heap, 50+ MiB resident and rising). Two arenas (this is a 2-core class
/// of machine, and the node's hot paths are a few threads) keep resident
/// memory near the heap. mimalloc and jemalloc were measured too and
/// resident memory was higher (docs/benchmarks.md, soak).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called first
        // thing in main, before any thread that could allocate exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
