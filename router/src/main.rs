//! `router --config FILE | --control-plane URL[,URL...] [--snapshot-dir DIR] [--listen ADDR]
//! [--admin ADDR] [--workers N]`: see `router --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use router::signal::Shutdown;
use router::{Config, Router, StartError};

/// jemalloc: fewer cycles per request than the system allocator on the proxy path, and it
/// returns memory after large streaming bursts (see benches/README.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for a bad config or flag (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let config = Config::parse();
    let _log_guard = router::telemetry::init(config.log_format);
    let metrics = match router::install_metrics() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("router: cannot install metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let router = match Router::bind(config, metrics) {
        Ok(router) => router,
        Err(e) => {
            match &e {
                // Every problem on its own line, once.
                StartError::Config { path, source } => {
                    eprintln!("router: config file {path} rejected:");
                    for issue in source.issues() {
                        eprintln!("  {issue}");
                    }
                }
                _ => eprintln!("router: {e}"),
            }
            return match e {
                StartError::Config { .. } | StartError::Flag(_) => ExitCode::from(EX_USAGE),
                _ => ExitCode::FAILURE,
            };
        }
    };
    // Handlers first: a SIGTERM right after the line below must drain, not kill.
    let shutdown = {
        let _runtime = router.enter();
        match Shutdown::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("router: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let (proxy, admin) = (router.proxy_addr(), router.admin_addr());
    let tls = router
        .tls_addr()
        .map(|addr| format!(" tls={addr}"))
        .unwrap_or_default();
    let announce = move || {
        println!("router listening proxy={proxy} admin={admin}{tls}");
        let _ = std::io::stdout().flush();
    };
    match router.run(shutdown.wait(), announce) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("router: {e}");
            ExitCode::FAILURE
        }
    }
}
