//! Weight bytes streamed per second by the matrix–vector kernels, next to a
//! sequential-read roofline measured in the same run with the same threads.
//!
//! For every 3B-model shape (in -> out), weight format, kernel path and 1 or 2 threads, one
//! iteration is one decode-style product `y = W x`. Each benchmark rotates over enough copies
//! of its matrix to exceed the last-level cache several times over, so the weights come from
//! DRAM as they do when a 2 GB model decodes. The roofline reads buffers of the same total
//! size with the same threads, with plain wide loads.
//!
//! `cargo bench -p spillway-kernels --bench matvec [-- FILTER]` runs it (FILTER is criterion's,
//! e.g. `Q4_0`); the table at the end summarises GB/s and the fraction of the roofline.
//! `SPILLWAY_BENCH_QUICK=1` trims it to the Q4_0/Q4_K shapes (a few minutes).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use spillway_kernels::dispatch::{KernelPath, Kernels};
use spillway_kernels::formats::{GgmlType, Weights};
use spillway_kernels::matmul::{Activations, Matrix, matmul};
use spillway_kernels::pool::{PoolConfig, ThreadPool};
use spillway_kernels::probe::{AlignedBytes, Rng, parallel_read, random_weights};

/// (in, out) = (cols, rows) of the 3B model's matrices.
const SHAPES: [(usize, usize); 6] = [
    (3072, 4096),
    (3072, 1024),
    (4096, 3072),
    (3072, 9216),
    (9216, 3072),
    (3072, 131072),
];

const FORMATS: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

/// Minimum bytes a benchmark cycles through: several times any last-level cache here.
const WORKING_SET: usize = 256 << 20;

fn roofline(c: &mut Criterion, pools: &[ThreadPool]) {
    let mut buf = AlignedBytes::zeroed(WORKING_SET);
    Rng::new(1).fill_bytes(buf.bytes_mut());
    let mut g = c.benchmark_group("roofline");
    g.throughput(Throughput::Bytes(WORKING_SET as u64));
    for pool in pools {
        g.bench_function(format!("read-{}t", pool.threads()), |b| {
            b.iter(|| parallel_read(pool, buf.bytes()))
        });
    }
    g.finish();
}

fn matvec_benches(c: &mut Criterion, pools: &[ThreadPool]) {
    let quick = std::env::var_os("SPILLWAY_BENCH_QUICK").is_some();
    let paths: Vec<Kernels> = KernelPath::supported()
        .into_iter()
        .map(|p| Kernels::new(p).unwrap())
        .collect();
    let mut rng = Rng::new(2);
    for (cols, rows) in SHAPES {
        if quick && cols * rows > 3072 * 9216 {
            continue;
        }
        for ty in FORMATS {
            if quick && !matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_K) {
                continue;
            }
            let group = format!("matvec_{cols}to{rows}");
            let id_base = format!("{ty}");
            // Skip whole groups the filter excludes before generating data.
            if !criterion_filter_matches(&format!("{group}/{id_base}")) {
                continue;
            }
            let one = random_weights(ty, rows, cols, &mut rng);
            let copies = WORKING_SET.div_ceil(one.bytes().len()).max(1);
            let buffers: Vec<AlignedBytes> = (0..copies).map(|_| one.clone()).collect();
            drop(one);
            let matrices: Vec<Matrix<'_>> = buffers
                .iter()
                .map(|b| {
                    Matrix::new(Weights::from_bytes(ty, b.bytes()).unwrap(), rows, cols).unwrap()
                })
                .collect();
            let xf: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
            let mut y = vec![0.0f32; rows];
            let mut g = c.benchmark_group(&group);
            g.throughput(Throughput::Bytes(matrices[0].weights().n_bytes() as u64));
            for k in &paths {
                let mut x = Activations::new(matrices[0].act_format(), cols, 1);
                x.set(k, &xf);
                for pool in pools {
                    let next = Cell::new(0usize);
                    g.bench_function(format!("{id_base}-{}-{}t", k.path(), pool.threads()), |b| {
                        b.iter(|| {
                            let i = next.get();
                            next.set((i + 1) % matrices.len());
                            matmul(pool, k, &matrices[i], &x, &mut y);
                            black_box(&y);
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// Prefill: 32 tokens per pass over the weights (the matrix–matrix path).
fn matmul_benches(c: &mut Criterion, pools: &[ThreadPool]) {
    let (cols, rows, tokens) = (3072, 4096, 32);
    let k = Kernels::best();
    let mut rng = Rng::new(3);
    let mut g = c.benchmark_group(format!("prefill{tokens}_{cols}to{rows}"));
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K] {
        let data = random_weights(ty, rows, cols, &mut rng);
        let w = Matrix::new(Weights::from_bytes(ty, data.bytes()).unwrap(), rows, cols).unwrap();
        let xf: Vec<f32> = (0..cols * tokens).map(|_| rng.unit()).collect();
        let mut x = Activations::new(w.act_format(), cols, tokens);
        x.set(&k, &xf);
        let mut y = vec![0.0f32; rows * tokens];
        // Throughput as multiply-accumulates: tokens x weights.
        g.throughput(Throughput::Elements((rows * cols * tokens) as u64));
        for pool in pools {
            g.bench_function(format!("{ty}-{}-{}t", k.path(), pool.threads()), |b| {
                b.iter(|| matmul(pool, &k, &w, &x, &mut y))
            });
        }
    }
    g.finish();
}

/// Criterion's positional filter (the first free argument), if any.
fn criterion_filter_matches(id: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.iter().find(|a| !a.starts_with('-') && *a != "--bench");
    filter.is_none_or(|f| id.contains(f.as_str()) || f.contains(id))
}

// ------------------------------------------------------------------ summary table

fn criterion_dir() -> Option<PathBuf> {
    // target/<profile>/deps/<bench> -> target/criterion
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    Some(
        std::env::var_os("CRITERION_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("criterion")),
    )
}

fn mean_ns(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn print_summary() {
    let Some(root) = criterion_dir() else { return };
    let gbps = |group: &str, id: &str, bytes: f64| {
        mean_ns(&root.join(group).join(id)).map(|ns| bytes / ns)
    };
    let mut roof = BTreeMap::new();
    for t in [1, 2] {
        if let Some(v) = gbps("roofline", &format!("read-{t}t"), WORKING_SET as f64) {
            roof.insert(t, v);
        }
    }
    let paths: Vec<KernelPath> = KernelPath::supported();
    println!(
        "\n## Weight bytes streamed per second (GB/s; % of the read roofline with the same threads)\n"
    );
    let rl = |t| {
        roof.get(&t)
            .map_or("-".to_string(), |v: &f64| format!("{v:.1}"))
    };
    println!(
        "Read roofline: 1 thread {} GB/s, 2 threads {} GB/s\n",
        rl(1),
        rl(2)
    );
    let mut header = String::from("| shape (in->out) | format |");
    let mut rule = String::from("|---|---|");
    for p in &paths {
        for t in [1, 2] {
            header += &format!(" {p} {t}t |");
            rule += "---|";
        }
    }
    println!("{header}\n{rule}");
    for (cols, rows) in SHAPES {
        for ty in FORMATS {
            let bytes = ty.bytes_for((rows * cols) as u64).unwrap() as f64;
            let group = format!("matvec_{cols}to{rows}");
            let mut line = format!("| {cols}->{rows} | {ty} |");
            let mut any = false;
            for p in &paths {
                for t in [1, 2] {
                    match gbps(&group, &format!("{ty}-{p}-{t}t"), bytes) {
                        Some(v) => {
                            any = true;
                            let pct = roof
                                .get(&t)
                                .map_or(String::new(), |r| format!(" ({:.0}%)", 100.0 * v / r));
                            line += &format!(" {v:.1}{pct} |");
                        }
                        None => line += " - |",
                    }
                }
            }
            if any {
                println!("{line}");
            }
        }
    }
}

fn main() {
    let pools: Vec<ThreadPool> = [1, 2]
        .into_iter()
        .map(|t| ThreadPool::new(PoolConfig::with_threads(t)).unwrap())
        .collect();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    roofline(&mut c, &pools);
    matvec_benches(&mut c, &pools);
    matmul_benches(&mut c, &pools);
    c.final_summary();
    print_summary();
}
