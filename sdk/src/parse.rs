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

    #[test]
    fn tap_and_generic() {
        let c = tap("1..3\nok 1 a\nnot ok 2 b\nok 3 c # SKIP later\n").expect("tap");
        assert_eq!((c.passed, c.failed, c.skipped), (1, 1, 1));
        let g = passed_failed("Tests: 7 passed, 2 failed, 1 skipped").expect("generic");
        assert_eq!((g.passed, g.failed, g.skipped), (7, 2, 1));
    }
}
