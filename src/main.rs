//! The binary's edge: hands over to [`cio_sync::cli::main`], the single exit point.

/// mimalloc instead of glibc's malloc: a run makes several small allocations per row on the
/// source's thread and frees them on the run loop's, and glibc's arenas spent up to half of
/// a backfill's CPU on that (`perf record`: `cfree`, `unlink_chunk`, `malloc_consolidate`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cio_sync::cli::main()
}
