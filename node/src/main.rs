fn main() {
    std::process::exit(fleetsync::cli::main());
}
