//! `spillway kernels`: which SIMD path this CPU gets, whether every supported path agrees
//! with the scalar reference here, and (with `--bench`) how close the matrix–vector kernels
//! come to the memory's read bandwidth. Run it on a new board before trusting it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use spillway_kernels::GgmlType;
use spillway_kernels::dispatch::{self, ENV_KERNELS, KernelPath, Kernels};
use spillway_kernels::pool::{PoolConfig, ThreadPool};
use spillway_kernels::probe;

#[derive(Debug, Args)]
pub struct KernelsArgs {
    /// Also measure matrix–vector throughput on the 3B model's shapes against a
    /// sequential-read roofline (takes about a minute; uses ~300 MB of RAM).
    #[arg(long)]
    bench: bool,

    /// Largest thread count to measure with (each count from 1 up is measured).
    #[arg(long, default_value_t = default_threads(), value_name = "N")]
    threads: usize,

    /// Pin worker threads to these CPUs (comma-separated, e.g. `4,5,6,7` for the big cores
    /// of an RK3588).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cpus: Option<Vec<usize>>,

    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    seconds: f64,

    /// Bytes of weights each measurement cycles through, in MiB; keep it well above the
    /// last-level cache so the weights come from DRAM, as a real model's do.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    working_set_mib: usize,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn run(args: KernelsArgs) -> anyhow::Result<ExitCode> {
    println!("cpu: {}", dispatch::cpu_summary());
    let supported = KernelPath::supported();
    println!(
        "kernel paths supported here: {}",
        supported
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let selected = dispatch::select().context("choosing the kernel path")?;
    let why = match std::env::var(ENV_KERNELS) {
        Ok(v) if !v.trim().is_empty() => format!("forced by {ENV_KERNELS}={v}"),
        _ => "the fastest this CPU supports".to_string(),
    };
    println!("selected: {} ({why})", selected.path());

    let mut failed = false;
    for path in &supported {
        let kernels = Kernels::new(*path)?;
        let failures = probe::self_check(&kernels);
        if failures.is_empty() {
            println!(
                "self-check {path}: ok (every format and op agrees with the scalar reference)"
            );
        } else {
            failed = true;
            println!("self-check {path}: FAILED");
            for f in &failures {
                println!("  {f}");
            }
        }
    }

    if args.bench {
        bench(selected, &args)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bench(kernels: &Kernels, args: &KernelsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be a positive number"
    );
    anyhow::ensure!(
        args.working_set_mib >= 1,
        "--working-set-mib must be at least 1"
    );
    let min_time = Duration::from_secs_f64(args.seconds);
    let working_set = args.working_set_mib << 20;
    let shapes = [
        (3072, 4096),
        (3072, 1024),
        (4096, 3072),
        (3072, 9216),
        (9216, 3072),
    ];
    let formats = [
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
    ];
    println!(
        "\nmatrix–vector bandwidth, {} path, weight GB/s (% of the read roofline with the same threads):",
        kernels.path()
    );
    for threads in 1..=args.threads {
        let pool = ThreadPool::new(PoolConfig {
            threads,
            cpus: args.cpus.clone(),
            ..PoolConfig::with_threads(threads)
        })
        .context("starting the worker threads")?;
        let roof = probe::measure_read_gbps(&pool, working_set, min_time);
        println!("\n{threads} thread(s): read roofline {roof:.1} GB/s");
        println!(
            "  {:<14} {}",
            "in -> out",
            formats.map(|f| format!("{:>14}", f.name())).join("")
        );
        for (cols, rows) in shapes {
            let mut line = format!("  {:<14}", format!("{cols} -> {rows}"));
            for ty in formats {
                let gbps = probe::measure_matvec_gbps(
                    &pool,
                    kernels,
                    ty,
                    (rows, cols),
                    working_set,
                    min_time,
                );
                line += &format!("{:>14}", format!("{gbps:.1} ({:.0}%)", 100.0 * gbps / roof));
            }
            println!("{line}");
        }
    }
    Ok(())
}
