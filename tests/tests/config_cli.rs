//! `spillway config --check`: what it prints for a good file, the warning (not a plain
//! OK) when the model file is missing, the parser's own multi-line report for a value of
//! the wrong kind, a key named for an out-of-range value, and the password never echoed.

use spillway_e2e::{TempDir, fixtures, run_spillway, stderr, stdout, workspace_root};

fn check(dir: &TempDir, toml: &str) -> std::process::Output {
    let file = dir.path().join("spillway.toml");
    std::fs::write(&file, toml).unwrap();
    let root = workspace_root().join("daemon/tests/boards/raspberry-pi-5-8gb");
    run_spillway(
        &["config", "--check", file.to_str().unwrap()],
        &[
            ("SPILLWAY_ROUTER_BOARDS_DIR", "/nonexistent"),
            ("SPILLWAY_ROUTER_FS_ROOT", root.to_str().unwrap()),
            ("SPILLWAY_DEVICE", "cfg-test"),
        ],
    )
}

#[test]
fn a_good_file_resolves_and_says_ok() {
    let dir = TempDir::new("config-ok");
    let model = fixtures().join("models/tiny-q4_0.gguf");
    let out = check(
        &dir,
        &format!(
            "[model]\npath = {:?}\n[engine]\nkv_type = \"q8_0\"\nram_budget = \"3GiB\"\n\
             [mqtt]\nusername = \"edge\"\npassword = \"hunter2-secret\"\n\
             [router]\ncloud_routes = [\"https\"]\nmemory_margin = \"256MiB\"\n",
            model.display()
        ),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for want in [
        "kv_type = \"q8_0\"",
        "ram_budget = \"3GiB\"",
        "cloud_routes = [\"https\"]",
        "memory_margin = \"256MiB\"",
        "password = \"(set)\"",
        "request topic = \"spillway/cfg-test/request\"",
        "board = raspberry-pi-5-8gb",
        "# OK",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("warning"), "{text}");
    assert!(!text.contains("hunter2") && !stderr(&out).contains("hunter2"));
}

#[test]
fn a_missing_model_is_a_warning_not_a_plain_ok() {
    let dir = TempDir::new("config-nomodel");
    let out = check(&dir, "[model]\npath = \"/nonexistent/model.gguf\"\n");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: model.path: /nonexistent/model.gguf"),
        "{}",
        stderr(&out)
    );
    assert!(text.contains("# valid, with 1 warning"), "{text}");
    assert!(!text.contains("# OK"), "{text}");
}

#[test]
fn errors_name_the_line_or_the_key() {
    let dir = TempDir::new("config-bad");
    // A value of the wrong kind: the parser's report keeps its lines, quoting the line.
    let out = check(&dir, "[engine]\nbatch = 64\nkv_type = \"q4\"\n");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("\n3 | kv_type = \"q4\""), "{err}");
    assert!(err.contains("q8_0"), "{err}");
    // A value out of range: the key and the bound.
    let out = check(&dir, "[service]\nqueue = 0\n");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("service.queue: must be between 1 and 4096"),
        "{err}"
    );
    // A password file that cannot be read: the key and the path.
    let out = check(
        &dir,
        "[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("mqtt.password_file: /nonexistent/pw"), "{err}");
}
