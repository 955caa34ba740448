fn main() {
    fleetsync::memory::limit_arenas();
    std::process::exit(fleetsync::cli::main());
}
