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
    assert!(
        cache
            .path()
            .join("spillway/demo-tiny-tekken-q4_k_m.gguf")
            .is_file(),
        "the model is cached"
    );
}

#[test]
fn without_a_model_or_vocabulary_the_demo_says_what_to_do() {
    let cache = TempDir::new("demo-empty");
    let out = run_spillway(
        &["demo", "--tekken", "/nonexistent/tekken.json"],
        &[("XDG_CACHE_HOME", cache.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tekken.json"), "{}", stderr(&out));
}
