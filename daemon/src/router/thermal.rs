//! The thermal state machine: how hot the board is, as far as routing is concerned.
//!
//! [`Thermal`] keeps a [`ThermalState`] that moves *up* as soon as a reading reaches an
//! enter threshold and *down* only once a reading falls below the matching exit threshold,
//! so a SoC hovering around a limit does not flap between local and cloud:
//!
//! | from \ reading `t`  | `t ≥ hard_enter` | `hard_exit ≤ t < hard_enter` | `soft_enter ≤ t < hard_exit`  | `soft_exit ≤ t < soft_enter` | `t < soft_exit` |
//! |---------------------|------------------|------------------------------|-------------------------------|------------------------------|-----------------|
//! | `Normal`            | `Hard`           | `Soft`                       | `Soft`                        | `Normal`                     | `Normal`        |
//! | `Soft`              | `Hard`           | `Soft`                       | `Soft`                        | `Soft`                       | `Normal`        |
//! | `Hard`              | `Hard`           | `Hard`                       | `Soft`                        | `Soft`                       | `Normal`        |
//!
//! The thresholds are ordered `soft_exit < soft_enter ≤ hard_exit < hard_enter`
//! ([`ThermalLimits::validate`]), so the columns cover every reading once. A missing (or
//! non-finite) reading keeps the state: a sensor hiccup must neither cool nor heat the
//! board on paper. Before the first reading the state is `Normal`. In `Soft` and `Hard`,
//! local generation runs on [`PolicyConfig::hot_threads`](crate::router::PolicyConfig::hot_threads) instead of
//! [`PolicyConfig::threads`](crate::router::PolicyConfig::threads) to shed heat; in `Hard` nothing new starts locally.

use super::error::{PolicyError, invalid};

/// How hot the board is, as far as routing is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThermalState {
    /// Below the soft limit (or not yet cooled below its exit threshold from above).
    #[default]
    Normal,
    /// At or above the soft limit: prefer the cloud, run locally on fewer threads.
    Soft,
    /// At or above the hard limit: start nothing new locally.
    Hard,
}

impl ThermalState {
    /// The name used in telemetry: `normal`, `soft`, `hard`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThermalState::Normal => "normal",
            ThermalState::Soft => "soft",
            ThermalState::Hard => "hard",
        }
    }
}

/// Temperature thresholds in °C. A state is entered at `*_enter_c` and left only below
/// `*_exit_c`; the gap between them is the hysteresis band.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThermalLimits {
    pub soft_enter_c: f32,
    pub soft_exit_c: f32,
    pub hard_enter_c: f32,
    pub hard_exit_c: f32,
}

impl ThermalLimits {
    /// Checks that the thresholds are finite and ordered
    /// `soft_exit < soft_enter ≤ hard_exit < hard_enter`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let all = [
            self.soft_enter_c,
            self.soft_exit_c,
            self.hard_enter_c,
            self.hard_exit_c,
        ];
        if all.iter().any(|t| !t.is_finite()) {
            return Err(invalid("thermal", "thresholds must be finite numbers"));
        }
        if self.soft_exit_c >= self.soft_enter_c {
            return Err(invalid(
                "thermal.soft_exit_c",
                format!(
                    "{} °C must be below soft_enter_c {} °C",
                    self.soft_exit_c, self.soft_enter_c
                ),
            ));
        }
        if self.hard_exit_c >= self.hard_enter_c {
            return Err(invalid(
                "thermal.hard_exit_c",
                format!(
                    "{} °C must be below hard_enter_c {} °C",
                    self.hard_exit_c, self.hard_enter_c
                ),
            ));
        }
        // Leaving Hard must land in (or above) the Soft band: a board that cooled just
        // below the hard exit is still too warm for full-speed local generation.
        if self.soft_enter_c > self.hard_exit_c {
            return Err(invalid(
                "thermal.soft_enter_c",
                format!(
                    "{} °C must not be above hard_exit_c {} °C",
                    self.soft_enter_c, self.hard_exit_c
                ),
            ));
        }
        Ok(())
    }
}

/// The thermal state machine: the state, and the last reading that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Thermal {
    limits: ThermalLimits,
    state: ThermalState,
    last_c: Option<f32>,
    /// The latest update carried no usable reading, so `last_c` is older than it looks.
    stale: bool,
}

impl Thermal {
    /// Starts in [`ThermalState::Normal`] with no reading.
    pub fn new(limits: ThermalLimits) -> Result<Thermal, PolicyError> {
        limits.validate()?;
        Ok(Thermal {
            limits,
            state: ThermalState::Normal,
            last_c: None,
            stale: false,
        })
    }

    /// Applies a reading (see the transition table in the module documentation) and
    /// returns the new state. `None` or a non-finite value keeps the state.
    pub fn update(&mut self, reading_c: Option<f32>) -> ThermalState {
        let Some(t) = reading_c.filter(|t| t.is_finite()) else {
            self.stale = true;
            return self.state;
        };
        let l = &self.limits;
        self.state = if t >= l.hard_enter_c
            || (self.state == ThermalState::Hard && t >= l.hard_exit_c)
        {
            ThermalState::Hard
        } else if t >= l.soft_enter_c || (self.state >= ThermalState::Soft && t >= l.soft_exit_c) {
            ThermalState::Soft
        } else {
            ThermalState::Normal
        };
        self.last_c = Some(t);
        self.stale = false;
        self.state
    }

    pub fn state(&self) -> ThermalState {
        self.state
    }

    /// The last usable reading, in °C.
    pub fn last_reading_c(&self) -> Option<f32> {
        self.last_c
    }

    pub fn limits(&self) -> &ThermalLimits {
        &self.limits
    }

    /// Why the board is not `Normal`, e.g. `soc 83.1 °C above hard limit 82 °C`; `None`
    /// when it is.
    pub fn reason(&self) -> Option<String> {
        let l = &self.limits;
        let (name, enter, exit) = match self.state {
            ThermalState::Normal => return None,
            ThermalState::Soft => ("soft", l.soft_enter_c, l.soft_exit_c),
            ThermalState::Hard => ("hard", l.hard_enter_c, l.hard_exit_c),
        };
        let when = if self.stale { " (last reading)" } else { "" };
        Some(match self.last_c {
            Some(t) if t >= enter => format!(
                "soc {t:.1} °C{when} above {name} limit {} °C",
                degrees(enter)
            ),
            Some(t) => format!(
                "soc {t:.1} °C{when} not yet below {name} exit {} °C (limit {} °C)",
                degrees(exit),
                degrees(enter)
            ),
            // States above Normal are only entered from a reading; kept for totality.
            None => format!("soc thermal state {name}"),
        })
    }
}

/// `82` or `82.5`: limits are usually whole degrees.
fn degrees(c: f32) -> String {
    if c.fract() == 0.0 {
        format!("{c:.0}")
    } else {
        format!("{c:.1}")
    }
}
