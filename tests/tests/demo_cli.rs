//! `spillway demo` from nothing: it synthesizes (and caches) a tiny model, starts the
//! embedded broker and the service, and prints a streamed answer and its route.

use spillway_e2e::{TempDir, fixtures, run_spillway, stderr, stdout};

#[test]
fn the_demo_answers_over_mqtt_from_a_clean_cache() {
    let cache = TempDir::new("demo-cache");
    let tekken = fixtures().join("tekken_240911.json");
    let env = [
        ("XDG_CACHE_HOME", cache.path().to_str().unwrap()),
        ("SPILLWAY_TEKKEN", tekken.to_str().unwrap()),
    ];
    for run in 0..2 {
        let out = run_spillway(&["demo", "--max-tokens", "16"], &env);
        let text = stdout(&out);
        assert!(out.status.success(), "run {run}: {text}\n{}", stderr(&out));
        assert!(
            text.contains("embedded MQTT broker on 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("answer: "), "{text}");
        assert!(text.contains("route: local"), "{text}");
        assert!(text.contains("16 generated tokens"), "{text}");
    }
    assert_eq!(cached_models(&cache).len(), 1, "the model is cached");
}

/// The demo models in a cache directory.
fn cached_models(cache: &TempDir) -> Vec<String> {
    std::fs::read_dir(cache.path().join("spillway"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("demo-tiny-") && n.ends_with(".gguf"))
        .collect()
}

/// From a plain clone there is no tekken.json: the built-in vocabulary makes the model,
/// once, and the answer is real text decoded from it.
#[test]
fn the_demo_runs_offline_on_its_built_in_vocabulary() {
    let cache = TempDir::new("demo-builtin");
    let env = [("XDG_CACHE_HOME", cache.path().to_str().unwrap())];
    for run in 0..2 {
        let out = run_spillway(&["demo", "--builtin-vocab", "--max-tokens", "12"], &env);
        let (text, log) = (stdout(&out), stderr(&out));
        assert!(out.status.success(), "run {run}: {text}\n{log}");
        assert_eq!(
            log.contains("synthesizing a tiny random-weight demo model with the built-in"),
            run == 0,
            "run {run} synthesizes only the first time: {log}"
        );
        assert!(text.contains("route: local"), "{text}");
        assert!(text.contains("12 generated tokens"), "{text}");
    }
    assert_eq!(
        cached_models(&cache).len(),
        1,
        "{:?}",
        cached_models(&cache)
    );
    // A different vocabulary makes a different cached model, never reuses this one.
    let tekken = fixtures().join("tekken_240911.json");
    let out = run_spillway(
        &[
            "demo",
            "--tekken",
            tekken.to_str().unwrap(),
            "--max-tokens",
            "4",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cached_models(&cache).len(),
        2,
        "{:?}",
        cached_models(&cache)
    );
}

#[test]
fn a_missing_vocabulary_file_is_named() {
    let cache = TempDir::new("demo-empty");
    let out = run_spillway(
        &["demo", "--tekken", "/nonexistent/tekken.json"],
        &[("XDG_CACHE_HOME", cache.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--tekken /nonexistent/tekken.json: no such file"),
        "{}",
        stderr(&out)
    );
}
