fn main() -> std::process::ExitCode {
    promo_attribution::cli::main()
}
