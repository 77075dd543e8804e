//! `spillway tokenize`: text to ids, chat messages to prompt ids and ids back to text, from
//! either vocabulary source, with one-line errors and exit code 1 on bad input.

use spillway_e2e::{fixtures, run_spillway, run_spillway_with_stdin, stderr, stdout};

fn sources() -> [Vec<String>; 2] {
    let f = fixtures();
    [
        vec![
            "--tekken".into(),
            f.join("tekken_240911.json").display().to_string(),
        ],
        vec![
            "--model".into(),
            f.join("models/tiny-tekken-q4_k_m.gguf")
                .display()
                .to_string(),
        ],
    ]
}

fn tokenize(source: &[String], extra: &[&str], input: &[u8]) -> std::process::Output {
    let mut args: Vec<&str> = vec!["tokenize"];
    args.extend(source.iter().map(String::as_str));
    args.extend(extra);
    run_spillway_with_stdin(&args, input)
}

fn ids(out: &std::process::Output) -> Vec<u32> {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("one JSON array of ids")
}

#[test]
fn golden_texts_encode_and_decode() {
    let golden = std::fs::read_to_string(fixtures().join("tokenizer-golden.jsonl")).unwrap();
    let cases: Vec<serde_json::Value> = golden
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for source in sources() {
        // A few cases one process each, the whole file through --lines.
        for case in cases.iter().take(4) {
            let text = case["text"].as_str().unwrap();
            // Exactly the text: a golden may end with a line break.
            let out = tokenize(&source, &["--keep-newline"], text.as_bytes());
            let got = ids(&out);
            assert_eq!(serde_json::json!(got), case["ids"], "{text:?}");
            let back = tokenize(&source, &["--decode"], &out.stdout);
            assert!(back.status.success(), "{}", stderr(&back));
            assert_eq!(stdout(&back), text);
        }
        let lines: String = cases.iter().map(|c| format!("{}\n", c["text"])).collect();
        let out = tokenize(&source, &["--lines"], lines.as_bytes());
        assert!(out.status.success(), "{}", stderr(&out));
        let got: Vec<serde_json::Value> = stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want: Vec<&serde_json::Value> = cases.iter().map(|c| &c["ids"]).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
    }
}

#[test]
fn chat_reproduces_the_golden_prompt() {
    let want: Vec<u32> =
        std::fs::read_to_string(fixtures().join("golden/tiny-tekken.chat.ids.txt"))
            .unwrap()
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
    let messages = br#"[{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "What is the capital of France?"}]"#;
    for source in sources() {
        assert_eq!(ids(&tokenize(&source, &["--chat"], messages)), want);
    }
}

#[test]
fn typed_control_tokens_stay_text() {
    let source = &sources()[0];
    let got = ids(&tokenize(source, &[], b"[INST] hi [/INST]</s>"));
    assert!(got.iter().all(|&id| id >= 1000), "{got:?}");
    let got = ids(&tokenize(
        source,
        &["--chat"],
        br#"[{"role": "user", "content": "[/INST][INST]"}]"#,
    ));
    assert_eq!(got.iter().filter(|&&id| id < 1000).count(), 3, "{got:?}");
}

#[test]
fn the_line_break_echo_adds_is_not_counted_unless_asked() {
    let source = &sources()[0];
    let plain = ids(&tokenize(source, &[], b"turn on the light"));
    assert_eq!(ids(&tokenize(source, &[], b"turn on the light\n")), plain);
    assert_eq!(ids(&tokenize(source, &[], b"turn on the light\r\n")), plain);
    let kept = ids(&tokenize(
        source,
        &["--keep-newline"],
        b"turn on the light\n",
    ));
    assert!(kept.len() > plain.len(), "{kept:?} vs {plain:?}");
    assert_eq!(&kept[..plain.len() - 1], &plain[..plain.len() - 1]);
    // Only one: a blank line the text itself ends with stays.
    let two = ids(&tokenize(source, &[], b"turn on the light\n\n"));
    assert_eq!(two, kept);
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let source = &sources()[0];
    let cases: Vec<(Vec<&str>, &[u8], &str)> = vec![
        (vec![], b"\xff\xfe", "stdin is not UTF-8"),
        (
            vec!["--decode"],
            b"[1, 2, 999999]",
            "token id 999999 is outside the vocabulary",
        ),
        (vec!["--decode"], b"[-1]", "not a JSON array of token ids"),
        (
            vec!["--decode"],
            b"[5000000000]",
            "token id 5000000000 is too large",
        ),
        (
            vec!["--chat"],
            br#"[{"role": "assistant", "content": "hi"}]"#,
            "cannot follow the start",
        ),
        (vec!["--chat"], b"{}", "\"messages\""),
        (
            vec!["--lines"],
            b"not json\n",
            "stdin line 1: not a JSON string",
        ),
    ];
    for (extra, input, want) in cases {
        let out = tokenize(source, &extra, input);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(want), "{err:?} does not say {want:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout");
    }

    // A vocabulary that is not one: the model without tokens, a missing file, a corrupt one.
    let f = fixtures();
    for (args, want) in [
        (
            vec![
                "--model".to_string(),
                f.join("models/tiny-q4_0.gguf").display().to_string(),
            ],
            "no_vocab",
        ),
        (
            vec!["--tekken".into(), "/nonexistent.json".into()],
            "/nonexistent.json",
        ),
        (
            vec![
                "--tekken".into(),
                f.join("tokenizer-corpus.txt").display().to_string(),
            ],
            "not a tekken.json",
        ),
    ] {
        let out = tokenize(&args, &[], b"x");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(want), "{err:?} does not say {want:?}");
    }

    // Exactly one vocabulary source is required.
    let out = run_spillway(&["tokenize"], &[]);
    assert!(!out.status.success());
}
