//! The `broker` binary: parse the command line, bind, open the data directory, print where it
//! listens, and run until Ctrl-C or SIGTERM. Everything else lives in the library.

use std::io::Write;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: under durable publishing, glibc's allocator took
/// about a fifth of the broker's CPU (fastbin consolidation among it), and mimalloc lifts
/// ACKs/s by 8-10 % at a cost of 1-2 % more memory per idle connection (docs/performance.md).
/// Built without transparent huge pages (the `no_thp` feature in the workspace manifest):
/// with them, huge pages held over half the broker's RSS under steady chat load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let startup = match broker::cli::Args::parse().into_startup() {
        Ok(startup) => startup,
        Err(e) => {
            eprintln!("broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(startup.config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("broker: cannot listen on {}: {e}", startup.config.listen);
            return std::process::ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().expect("bound socket has an address");
    let key_file = startup.config.data_dir.join("dev-api-key");
    let dev_key = startup.dev_key.clone();
    // Announced only once the data directory is open: scripts wait for this line.
    let announce = move || {
        let mut out = std::io::stdout().lock();
        if let Some(key) = &dev_key {
            let _ = writeln!(
                out,
                "development API key (stored in {}): {key}",
                key_file.display()
            );
        }
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    };
    match broker::run_then(listener, startup.config, shutdown_signal(), announce).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broker: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
