//! Mosquitto for the chaos tests: on a free loopback port, with on-disk persistence on or
//! off, killed with SIGKILL and started again on the same port (and, with persistence on,
//! the same database).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TempDir, free_port};

/// Whether the broker keeps sessions and queued messages across its own restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Saved after every change (`autosave_on_changes`, interval 1): a kill -9 loses at most
    /// what arrived in the broker's current loop iteration.
    On,
    /// Nothing saved: a restart forgets every session and in-flight message.
    Off,
}

/// A mosquitto process; killed on drop.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    pub persistence: Persistence,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts mosquitto on a free loopback port. The port is free when chosen, not
    /// reserved: if another process takes it first, mosquitto exits and another port is
    /// tried (three in all).
    pub fn start(persistence: Persistence) -> Result<Broker, String> {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Broker::start_on(persistence, free_port()) {
                Ok(b) => return Ok(b),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn start_on(persistence: Persistence, port: u16) -> Result<Broker, String> {
        let dir = TempDir::new("chaos-broker");
        let persist = match persistence {
            Persistence::On => format!(
                "persistence true\npersistence_location {}/\nautosave_on_changes true\nautosave_interval 1\n",
                dir.path().display()
            ),
            Persistence::Off => "persistence false\n".to_string(),
        };
        let conf = format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n{persist}\
             max_queued_messages 100000\nlog_dest file {}/mosquitto.log\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf)
            .map_err(|e| format!("writing mosquitto.conf: {e}"))?;
        let mut b = Broker {
            port,
            persistence,
            dir,
            child: None,
        };
        b.spawn()?;
        Ok(b)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.conf())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting mosquitto (apt-get install mosquitto): {e}"))?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "mosquitto did not open port {} (exit: {exited:?}); its log:\n{}",
                    self.port,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The port answered; make sure it was this mosquitto (another process could have
        // taken the port, and then this one exits on its failed bind).
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "mosquitto exited ({status}) after port {} opened: another process has it; its log:\n{}",
                self.port,
                self.log_text()
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the broker with SIGKILL (no goodbye to anyone, nothing saved).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (and database, with persistence on).
    pub fn start_again(&mut self) -> Result<(), String> {
        self.kill9();
        self.spawn()
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's log so far (all its lives).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}
