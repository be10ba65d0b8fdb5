//! Parsers for common test-runner outputs, turning them into [`TestCounts`].

use crate::TestCounts;

fn number_before(text: &str, word: &str) -> Option<u32> {
    let at = text.find(word)?;
    text[..at]
        .split_whitespace()
        .last()?
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// Sums every `test result: ok. 3 passed; 1 failed; 2 ignored; …` line of `cargo test` output
/// (one per test binary). `None` when there is none.
pub fn cargo_test(output: &str) -> Option<TestCounts> {
    let mut found = false;
    let mut total = TestCounts {
        passed: 0,
        failed: 0,
        skipped: 0,
    };
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        found = true;
        total.passed += number_before(rest, " passed").unwrap_or(0);
        total.failed += number_before(rest, " failed").unwrap_or(0);
        total.skipped += number_before(rest, " ignored").unwrap_or(0);
    }
    found.then_some(total)
}

/// Counts TAP lines (`ok 1 …`, `not ok 2 …`, `# SKIP`).
pub fn tap(output: &str) -> Option<TestCounts> {
    let mut total = TestCounts {
        passed: 0,
        failed: 0,
        skipped: 0,
    };
    let mut found = false;
    for line in output.lines().map(str::trim) {
        let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else {
            continue;
        };
        found = true;
        if rest.to_ascii_uppercase().contains("# SKIP") {
            total.skipped += 1;
        } else if ok {
            total.passed += 1;
        } else {
            total.failed += 1;
        }
    }
    found.then_some(total)
}

/// The last line shaped like `N passed, N failed[, N skipped]` (jest, pytest, vitest and others
/// print something close to it).
pub fn passed_failed(output: &str) -> Option<TestCounts> {
    output.lines().rev().find_map(|line| {
        let passed = number_before(line, " passed")?;
        Some(TestCounts {
            passed,
            failed: number_before(line, " failed").unwrap_or(0),
            skipped: number_before(line, " skipped").unwrap_or(0),
        })
    })
}

/// Counts from the first JavaScript test-runner summary found: node's test runner, jest,
/// vitest, ava, mocha, then plain TAP, then a generic `N passed, N failed` line.
pub fn js_test(output: &str) -> Option<TestCounts> {
    node_test(output)
        .or_else(|| jest(output))
        .or_else(|| vitest(output))
        .or_else(|| ava(output))
        .or_else(|| mocha(output))
        .or_else(|| tap(output))
        .or_else(|| passed_failed(output))
}

/// The closing block of `node --test` (`# pass 4` with the TAP reporter, `ℹ pass 4` with the
/// spec reporter; `fail`, `cancelled`, `skipped`, `todo`), which counts nested subtests once
/// (plain TAP counting would count them with their parents). When several runs printed one, the
/// last wins.
pub fn node_test(output: &str) -> Option<TestCounts> {
    let (mut pass, mut fail, mut cancelled, mut skipped, mut todo) = (None, None, 0, 0, 0);
    for line in output.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("# ").or_else(|| line.strip_prefix("ℹ ")) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = value.parse::<u32>() else {
            continue;
        };
        match key {
            "pass" => pass = Some(n),
            "fail" => fail = Some(n),
            "cancelled" => cancelled = n,
            "skipped" => skipped = n,
            "todo" => todo = n,
            _ => {}
        }
    }
    Some(TestCounts {
        passed: pass?,
        failed: fail?.saturating_add(cancelled),
        skipped: skipped.saturating_add(todo),
    })
}

/// `N <word>` counts in one summary line: `1 failed, 2 skipped, 3 passed` (any separators).
fn counted(line: &str, word: &str) -> Option<u32> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == '|')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
}

/// jest's `Tests:       1 failed, 1 skipped, 1 todo, 3 passed, 6 total` (not its `Test
/// Suites:` or `Snapshots:` lines).
pub fn jest(output: &str) -> Option<TestCounts> {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("Tests:"))?;
    counted(line, "total")?;
    Some(TestCounts {
        passed: counted(line, "passed").unwrap_or(0),
        failed: counted(line, "failed").unwrap_or(0),
        skipped: counted(line, "skipped")
            .unwrap_or(0)
            .saturating_add(counted(line, "todo").unwrap_or(0)),
    })
}

/// vitest's `      Tests  1 failed | 5 passed | 1 skipped (7)` (not its `Test Files` line).
pub fn vitest(output: &str) -> Option<TestCounts> {
    let line = output.lines().rev().map(str::trim).find_map(|l| {
        l.strip_prefix("Tests ")
            .filter(|rest| rest.trim_end().ends_with(')'))
    })?;
    let passed = counted(line, "passed");
    let failed = counted(line, "failed");
    if passed.is_none() && failed.is_none() {
        return None;
    }
    Some(TestCounts {
        passed: passed.unwrap_or(0),
        failed: failed.unwrap_or(0),
        skipped: counted(line, "skipped")
            .unwrap_or(0)
            .saturating_add(counted(line, "todo").unwrap_or(0)),
    })
}

/// ava's closing lines: `3 tests passed`, `1 test failed`, `2 tests skipped`, `1 test todo`,
/// `1 known failure` (a known failure is an expected one: it counts as passed).
pub fn ava(output: &str) -> Option<TestCounts> {
    let mut c = TestCounts {
        passed: 0,
        failed: 0,
        skipped: 0,
    };
    let mut found = false;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [n, noun, verb] = words.as_slice() else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else {
            continue;
        };
        let slot = match (*noun, *verb) {
            ("test" | "tests", "passed") | ("known", "failure" | "failures") => &mut c.passed,
            ("test" | "tests", "failed") => &mut c.failed,
            ("test" | "tests", "skipped" | "todo") => &mut c.skipped,
            _ => continue,
        };
        *slot = slot.saturating_add(n);
        found = true;
    }
    found.then_some(c)
}

/// mocha's `7 passing (12ms)`, `2 failing`, `1 pending`.
pub fn mocha(output: &str) -> Option<TestCounts> {
    let count = |word: &str| {
        output.lines().rev().find_map(|line| {
            let mut words = line.split_whitespace();
            let n = words.next()?.parse::<u32>().ok()?;
            (words.next()? == word).then_some(n)
        })
    };
    Some(TestCounts {
        passed: count("passing")?,
        failed: count("failing").unwrap_or(0),
        skipped: count("pending").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_summaries_are_summed() {
        let out = "running 2 tests\ntest a ... ok\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n\
                   test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s\n";
        let c = cargo_test(out).expect("counts");
        assert_eq!((c.passed, c.failed, c.skipped), (5, 1, 1));
        assert!(cargo_test("no tests here").is_none());
    }

    fn c(t: Option<TestCounts>) -> Option<(u32, u32, u32)> {
        t.map(|t| (t.passed, t.failed, t.skipped))
    }

    /// Summaries as each runner prints them (copied from their output).
    #[test]
    fn every_common_javascript_runner_is_counted() {
        let node = "✔ adds (0.5ms)\n▶ nested\n  ✔ inner (0.1ms)\n▶ nested (1ms)\nℹ tests 3\nℹ suites 1\nℹ pass 2\nℹ fail 1\nℹ cancelled 0\nℹ skipped 1\nℹ todo 0\nℹ duration_ms 40.1\n";
        assert_eq!(c(js_test(node)), Some((2, 1, 1)));
        let node_tap = "TAP version 13\n# Subtest: a\nok 1 - a\n1..1\n# tests 1\n# suites 0\n# pass 1\n# fail 0\n# cancelled 0\n# skipped 0\n# todo 0\n";
        assert_eq!(c(js_test(node_tap)), Some((1, 0, 0)));
        let jest = "PASS src/a.test.js\nFAIL src/b.test.js\n\nTest Suites: 1 failed, 1 passed, 2 total\nTests:       1 failed, 1 skipped, 1 todo, 3 passed, 6 total\nSnapshots:   2 passed, 2 total\nTime:        1.2 s\nRan all test suites.\n";
        assert_eq!(c(js_test(jest)), Some((3, 1, 2)));
        let vitest = " ✓ src/a.test.ts (3 tests) 2ms\n\n Test Files  1 failed | 2 passed (3)\n      Tests  1 failed | 5 passed | 1 skipped (7)\n   Start at  10:00:00\n   Duration  1.10s\n";
        assert_eq!(c(js_test(vitest)), Some((5, 1, 1)));
        let ava = "\n  ✔ adds\n  ✔ subtracts\n  ✔ multiplies\n  ─\n\n  3 tests passed\n";
        assert_eq!(c(js_test(ava)), Some((3, 0, 0)));
        let ava_mixed = "  ✘ [fail]: divides\n  ─\n\n  1 test failed\n  2 tests passed\n  1 known failure\n  1 test skipped\n  1 test todo\n";
        assert_eq!(c(js_test(ava_mixed)), Some((3, 1, 2)));
        let mocha =
            "  math\n    ✔ adds\n    1) divides\n\n  7 passing (12ms)\n  1 pending\n  2 failing\n";
        assert_eq!(c(js_test(mocha)), Some((7, 2, 1)));
        assert_eq!(c(js_test("built in 3s\nall done\n")), None);
    }

    #[test]
    fn tap_and_generic() {
        let c = tap("1..3\nok 1 a\nnot ok 2 b\nok 3 c # SKIP later\n").expect("tap");
        assert_eq!((c.passed, c.failed, c.skipped), (1, 1, 1));
        let g = passed_failed("Tests: 7 passed, 2 failed, 1 skipped").expect("generic");
        assert_eq!((g.passed, g.failed, g.skipped), (7, 2, 1));
    }
}
