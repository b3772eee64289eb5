#[global_allocator]
static ALLOCATOR: promo_attribution::hugepages::HugePageAlloc =
    promo_attribution::hugepages::HugePageAlloc;

fn main() -> std::process::ExitCode {
    promo_attribution::cli::main()
}
