//! The `mailintake` binary: parse the command line, start logging, load the config, and hand over
//! to [`mailintake::commands`]. Exit codes: 0 success, 1 a mailbox or the database failed, 2
//! invalid configuration.

use std::process::ExitCode;

use clap::Parser;
use mailintake::cli::Cli;
use mailintake::config::Config;
use mailintake::{commands, telemetry};

/// Two glibc malloc settings for a process that passes multi-MiB message bodies between threads
/// (measured over 10,000 and 50,000 messages in BENCHMARKS.md; no measurable cost in speed):
/// - two arenas: glibc gives every allocating thread its own, and bodies parsed on a blocking
///   thread and freed on the runtime's threads leave memory in each (peak RSS 118 → 85 MiB);
/// - a fixed 1 MiB mmap threshold: allocations above it go straight to the kernel and back when
///   freed; glibc's default threshold grows with every large free and then keeps freed bodies in
///   the heap (peak RSS 85 → 76 MiB, and 104 → 89 MiB at 50,000 messages).
///
/// An operator's own MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ is left alone.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator settings; it is called before any other thread
        // exists.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mailintake: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mailintake: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli.command, config, &cli.config)) {
        Ok(code) => code,
        Err(e) => {
            // Whatever a library put into the message, no credential of a URL leaves the process.
            eprintln!(
                "mailintake: {}",
                mailintake::config::redact_credentials(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}
