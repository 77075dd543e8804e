//! Board profiles: how to recognise a supported board, which thermal zone speaks for its
//! SoC and where its soft and hard temperature limits lie (with hysteresis), its big cores,
//! default thread count and expected CPU features, and the engine's defaults for each
//! amount of RAM it is sold with (RAM budget, context, KV cache type, sessions).
//!
//! A profile file describes one board family (`raspberry-pi-5`) with a `[[memory]]` entry
//! per RAM size; resolving it against a machine's `MemTotal` gives one [`BoardProfile`]
//! named after the variant (`raspberry-pi-5-8gb`). The built-in files are the repository's
//! `boards/*.toml`, compiled into the binary; a [`Catalog`] adds files from an override
//! directory (`/etc/spillway/boards/` on a board), which replace built-in families of the
//! same name and are tried first. `boards/README.md` documents the format.
//!
//! Detection ([`Catalog::detect`]) reads what the machine says about itself
//! ([`HostInfo`]: device tree, `/proc/cpuinfo`, `MemTotal`) under a root directory, so
//! tests run it on files captured from each board.
//!
//! - `profile`: a profile file parsed and validated, and resolved to one variant; no I/O.
//! - `catalog`: the built-in and override files, detection and selection by name.
//! - `host`: what the machine says about itself, read through [`crate::sysfs`].

mod catalog;
mod host;
mod profile;
#[cfg(test)]
mod tests;

pub use catalog::{Catalog, GENERIC, Selection};
pub use host::{CpuInfo, DeviceTree, HostInfo};
pub use profile::{
    BoardError, BoardMatch, BoardProfile, CpuProfile, Family, MemoryProfile, RamBudget,
    ThermalProfile, Threshold,
};
