//! The script protocol through the fault path (issue 15): `poke` and `peek`
//! are plain stores and loads through the mapping, so every first touch of a
//! page takes a real userfaultfd fault, and a SIGBUS at a full store comes
//! back as an answer (`mkwrite::guarded`). The pager runs as a process.

mod common;

use common::Mount;
use common::pager::{pager, script, sha};

const KIB: u64 = 1024;

/// A deterministic walk over boundaries: lengths, writes, reads, holes.
fn sequence(block: u64) -> Vec<String> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ block;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut eof = 64 * KIB;
    let mut lines = vec![format!("setlen {eof}")];
    for i in 0..120 {
        let near = |x: u64, j: u64| (x / 4096 * 4096 + j % 4096).saturating_sub(j % 3);
        match next(10) {
            0 => {
                eof = 4096 + next(200 * KIB);
                lines.push(format!("setlen {eof}"));
            }
            1 => lines.push(format!("punch {} {}", next(eof), next(3 * block) + 1)),
            2 => lines.push("flush".into()),
            3 => lines.push("evict".into()),
            4 | 5 => {
                // Reads stay below EOF: `read` answers `err range 0` past it,
                // `peek` the bytes it loaded first (tested on its own).
                let off = near(next(eof), next(4096));
                let len = (next(9000) + 1).min(eof.saturating_sub(off));
                if len > 0 {
                    lines.push(format!("read {off} {len}"));
                }
            }
            _ => {
                // Writes may run past EOF into the last page, and sometimes
                // into pages wholly past it: both answer `err range DONE`.
                let off = near(next(eof + 8192), next(4096));
                lines.push(format!("fill {off} {} {}", next(12000) + 1, i % 250 + 1));
            }
        }
    }
    lines.push("flush".into());
    lines.push(format!("read 0 {eof}"));
    lines.push("stat".into());
    lines
}

fn counters(stat: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        stat.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stat}"))
    };
    (field("faults_missing="), field("faults_wp="))
}

#[test]
fn poke_and_peek_answer_as_fill_and_read_do_but_through_the_fault_path() {
    let fs = Mount::ext4(64 << 20, 1024);
    for block in [512, 1024, 4096] {
        let checked = sequence(block);
        let raw: Vec<String> = checked
            .iter()
            .map(|l| l.replacen("fill ", "poke ", 1).replacen("read ", "peek ", 1))
            .collect();
        let args = |name: &str| {
            vec![
                fs.path(name).to_str().unwrap().to_owned(),
                "--block-size".into(),
                block.to_string(),
            ]
        };
        let run = |name: &str, lines: &[String]| {
            let args = args(name);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            script(&args, &(lines.join("\n") + "\n"))
        };
        let a = run(&format!("checked-{block}"), &checked);
        let b = run(&format!("raw-{block}"), &raw);
        assert_eq!(a.len(), checked.len());
        let (stat_a, stat_b) = (a.last().unwrap(), b.last().unwrap());
        for (i, (x, y)) in a.iter().zip(&b).enumerate().take(a.len() - 1) {
            assert_eq!(x, y, "block {block}: line {i} `{}` vs `{}`", checked[i], raw[i]);
        }
        assert!(
            a.iter().any(|l| l.starts_with("err range")),
            "the walk reaches past EOF"
        );
        let file = |name: String| std::fs::read(fs.path(&name)).unwrap();
        assert!(
            file(format!("checked-{block}")) == file(format!("raw-{block}")),
            "block {block}: the files differ"
        );
        assert_eq!(counters(stat_a), (0, 0), "fill and read take no fault: {stat_a}");
        let (missing, wp) = counters(stat_b);
        assert!(missing > 10 && wp > 0, "poke and peek fault: {stat_b}");
    }
}

#[test]
fn a_poke_into_a_full_tmpfs_answers_nospace_with_the_exact_count_and_goes_on() {
    let fs = Mount::tmpfs(64 * KIB);
    let file = fs.path("small");
    let answers = script(
        &[file.to_str().unwrap(), "--block-size", "1024"],
        "setlen 1048576\n\
         poke 0 131072 1\n\
         peek 0 65536\n\
         punch 0 8192\n\
         poke 65536 4096 2\n\
         poke 1048570 100 3\n\
         peek 1048000 1000\n\
         flush\n\
         stat\n",
    );
    assert_eq!(
        answers[..7],
        [
            "ok".to_string(),
            "err nospace 65536".into(),
            format!("ok {}", sha(&[1; 65536])),
            "ok".into(),
            "ok".into(),
            "err range 6".into(),
            "err range 576".into(),
        ]
    );
    assert_eq!(answers[7], "ok");
    // The pokes went through the fault path (fewer faults than pages: a
    // sequential writer's next pages are made writable with its fault).
    let (missing, _) = counters(&answers[8]);
    assert!(missing >= 4, "{}", answers[8]);
    let on_disk = std::fs::read(&file).unwrap();
    assert_eq!(on_disk.len(), 1 << 20);
    assert!(on_disk[..8192].iter().all(|&b| b == 0), "punched");
    assert!(
        on_disk[8192..65536].iter().all(|&b| b == 1),
        "every accepted byte"
    );
    assert!(
        on_disk[65536..69632].iter().all(|&b| b == 2),
        "the poke after the punch"
    );
    assert!(on_disk[1048570..].iter().all(|&b| b == 3), "the bytes below EOF");
    assert!(on_disk[69632..1048570].iter().all(|&b| b == 0), "nothing else");
}

#[test]
fn a_poke_over_quota_answers_quota_with_the_exact_count() {
    let fs = Mount::tmpfs(16 << 20);
    let file = fs.path("q");
    let answers = script(
        &[file.to_str().unwrap(), "--block-size", "1024", "--quota", "16K"],
        "setlen 65536\npoke 100 65000 5\nflush\n",
    );
    assert_eq!(answers, ["ok", "err quota 16284", "ok"]);
    let on_disk = std::fs::read(&file).unwrap();
    assert!(on_disk[100..16384].iter().all(|&b| b == 5));
    assert!(on_disk[16384..].iter().all(|&b| b == 0));
}

#[test]
fn a_poke_into_a_read_only_mapping_answers_readonly() {
    let fs = Mount::tmpfs(1 << 20);
    let file = fs.path("ro");
    std::fs::write(&file, [7u8; 5000]).unwrap();
    let answers = script(
        &[file.to_str().unwrap(), "--read-only"],
        "peek 0 5000\npoke 10 10 1\npeek 0 5000\n",
    );
    assert_eq!(
        answers,
        [
            format!("ok {}", sha(&[7; 5000])),
            "err readonly 0".into(),
            format!("ok {}", sha(&[7; 5000]))
        ]
    );
}

#[test]
fn script_refuses_on_full_wait_and_says_why() {
    let fs = Mount::tmpfs(1 << 20);
    let out = pager()
        .args(["script", fs.path("w").to_str().unwrap(), "--on-full", "wait"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--on-full wait") && stderr.contains("--on-full error"),
        "{stderr}"
    );
}
