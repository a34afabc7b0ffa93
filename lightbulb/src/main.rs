//! `lightbulb --config FILE [--store DIR] [--grpc ADDR] [--http ADDR] [--tls-cert FILE
//! --tls-key FILE [--tls-only]]`: see `lightbulb --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use lightbulb::signal::Shutdown;
use lightbulb::{Config, Lightbulb, StartError};

/// Exit status for a bad config or flag (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let config = Config::parse();
    let _log_guard = lightbulb::telemetry::init(config.log_format);
    let metrics = match lightbulb::metrics::install() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("lightbulb: cannot install metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lightbulb = match Lightbulb::bind(config, metrics) {
        Ok(lightbulb) => lightbulb,
        Err(e) => {
            match &e {
                // Every problem on its own line, once.
                StartError::Config { path, source } => {
                    eprintln!("lightbulb: config file {path} rejected:");
                    for issue in source.issues() {
                        eprintln!("  {issue}");
                    }
                }
                _ => eprintln!("lightbulb: {e}"),
            }
            return match e {
                StartError::Config { .. } | StartError::Usage(_) | StartError::Tls(_) => {
                    ExitCode::from(EX_USAGE)
                }
                _ => ExitCode::FAILURE,
            };
        }
    };
    // Handlers first: a SIGTERM right after the line below must drain, not kill.
    let shutdown = {
        let _runtime = lightbulb.enter();
        match Shutdown::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lightbulb: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let (grpc, http) = (lightbulb.grpc_addr(), lightbulb.http_addr());
    let announce = move || {
        println!("lightbulb listening grpc={grpc} http={http}");
        let _ = std::io::stdout().flush();
    };
    match lightbulb.run(shutdown.wait(), announce) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lightbulb: {e}");
            ExitCode::FAILURE
        }
    }
}
