//! `spillway board`: which board profile applies here (detected, or named in the
//! configuration), what it sets, what this CPU offers, and whether the configured model fits
//! the memory plan under the RAM budget. Exits 1 when it does not fit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::board::Catalog;
use crate::config::{BoardChoice, Config, KvTypeSetting, Overrides, RamBudgetSetting, Validated};
use crate::units::human_bytes;

#[derive(Debug, Args)]
pub struct BoardArgs {
    /// Configuration file, as `spillway serve` takes it (engine settings left at 0/auto
    /// come from the board profile).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The GGUF model to plan for (model.path).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Board profile instead of the configured one: auto, a board family
    /// (raspberry-pi-5: the variant for this machine's RAM) or a variant
    /// (raspberry-pi-5-8gb) (router.board).
    #[arg(long, value_name = "NAME")]
    board: Option<BoardChoice>,
    /// Largest memory plan allowed, e.g. 3GiB, auto or none (engine.ram_budget).
    #[arg(long, value_name = "BYTES")]
    ram_budget: Option<RamBudgetSetting>,
    /// Read /sys and /proc under this directory instead of / (router.fs_root).
    #[arg(long, value_name = "DIR")]
    fs_root: Option<PathBuf>,
    /// List every profile (built-in and overrides) with its engine defaults, and exit.
    #[arg(long)]
    list: bool,
}

pub(crate) fn run(args: BoardArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    config.apply(&Overrides {
        model: args.model.clone(),
        board: args.board.clone(),
        ram_budget: args.ram_budget,
        fs_root: args.fs_root.clone(),
        ..Overrides::default()
    });
    if args.list {
        let catalog = Catalog::with_overrides(&config.boards_dir())?;
        print_list(&catalog);
        return Ok(ExitCode::SUCCESS);
    }
    let v = config.resolve()?;
    print_board(&v);
    println!();
    println!("model      {}", v.engine.model.display());
    let plan = crate::engine::plan(&v.engine).with_context(|| {
        format!(
            "cannot plan memory for {} (put the GGUF model there, or pass --model)",
            v.engine.model.display()
        )
    })?;
    println!("{plan}");
    match plan.check() {
        Ok(()) => {
            match plan.budget {
                Some(budget) => println!(
                    "fits: {} of the {} budget, {} to spare",
                    human_bytes(plan.total()),
                    human_bytes(budget),
                    human_bytes(budget - plan.total())
                ),
                None => println!(
                    "fits: no budget set ({} planned)",
                    human_bytes(plan.total())
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "spillway: error: board {} cannot run this model as configured: {e}",
                v.board.profile.name
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The profile, why it was chosen, and the engine settings it leads to.
fn print_board(v: &Validated) {
    let sel = &v.board;
    let p = &sel.profile;
    let host = &v.host;
    let source = if p.source == "built-in" {
        String::new()
    } else {
        format!(" [from {}]", p.source)
    };
    println!("board      {}: {}{source}", p.name, p.description);
    println!("           chosen by {}", sel.family_reason);
    if !sel.variant_reason.is_empty() {
        println!(
            "           memory variant {} GB: {}",
            p.memory.ram_gb, sel.variant_reason
        );
    }
    let cores = host
        .cpuinfo
        .cores()
        .unwrap_or_else(|| "cores unknown".to_string());
    println!(
        "cpu        {} ({}, {} processors in /proc/cpuinfo)",
        host.arch, cores, host.cpuinfo.processors
    );
    let missing = p.missing_features(host);
    if p.cpu.features.is_empty() {
    } else if host.cpuinfo.features.is_empty() {
        println!(
            "           expects {} (/proc/cpuinfo lists no features to check)",
            p.cpu.features.join(" ")
        );
    } else if missing.is_empty() {
        println!("           has the expected {}", p.cpu.features.join(" "));
    } else {
        println!(
            "           WARNING: lacks {} that this profile expects: slower kernels, or the wrong profile",
            missing.join(" ")
        );
    }
    match spillway_kernels::dispatch::select() {
        Ok(k) => println!(
            "           kernels: {} (this process's CPU)",
            k.path().name()
        ),
        Err(e) => println!("           kernels: {e}"),
    }
    let zones = if p.thermal.zones.is_empty() {
        "the hottest zone".to_string()
    } else {
        p.thermal.zones.join(", ")
    };
    let snapshot =
        crate::monitor::Sampler::new(&v.config.router.fs_root, p.thermal.zones.clone()).sample();
    let now = match (snapshot.temperature_c, &snapshot.thermal_zone) {
        (Some(t), Some(zone)) => format!("{t:.1} °C now ({zone})"),
        (Some(t), None) => format!("{t:.1} °C now"),
        _ => "no temperature reading".to_string(),
    };
    let t = &v.thermal;
    println!(
        "thermal    {zones}: {now}; soft {:.0}/{:.0} °C, hard {:.0}/{:.0} °C (enter/exit)",
        t.soft_enter_c, t.soft_exit_c, t.hard_enter_c, t.hard_exit_c
    );
    let e = &v.engine;
    let c = &v.config.engine;
    let from = |board_default: bool| if board_default { "board" } else { "config" };
    let pinned = match &e.cpus {
        Some(cpus) => format!(
            "pinned to CPUs {}",
            cpus.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => "unpinned".to_string(),
    };
    println!(
        "engine     {} threads ({}), {pinned}; context {} ({}), KV cache {} ({}), {} sessions ({})",
        e.threads,
        from(c.threads == 0),
        e.context,
        from(c.context == 0),
        e.kv_type.name(),
        from(c.kv_type == KvTypeSetting::Auto),
        e.sessions,
        from(c.sessions == 0),
    );
    println!("budget     {}", v.budget_source);
    if let Some(total) = host.mem_total {
        println!(
            "           MemTotal {}; the systemd unit's MemoryHigh=80%/MemoryMax=90% are {} / {}",
            human_bytes(total),
            human_bytes(total / 10 * 8),
            human_bytes(total / 10 * 9)
        );
    }
}

fn print_list(catalog: &Catalog) {
    println!(
        "{:<24} {:>8} {:>8} {:>5} {:>8}  description",
        "profile", "budget", "context", "kv", "sessions"
    );
    for f in catalog.families() {
        for m in &f.memory {
            let budget = match m.ram_budget {
                crate::board::RamBudget::Share(p) => format!("{p}%"),
                crate::board::RamBudget::Bytes(b) => human_bytes(b),
            };
            println!(
                "{:<24} {:>8} {:>8} {:>5} {:>8}  {}",
                f.variant_name(m.ram_gb),
                budget,
                m.context,
                m.kv_type.name(),
                m.sessions,
                f.description
            );
        }
    }
    println!(
        "\n`--board FAMILY` picks the variant for this machine's RAM; `--board auto` detects the board."
    );
}
