//! Crash recovery. A run records the pid and the start time of the process executing it; when a
//! store is opened, runs left `running` whose process is gone (no such pid, or a pid reused by a
//! process that started at another time) become `interrupted`, with their unfinished steps, and
//! any program such a run started is killed: those in its steps' cgroups, and any that still
//! carries its marker. A run that another live process is executing is never touched.

use crate::store::{Store, StoreError};

/// The start time of process `pid` in clock ticks since boot (`/proc/PID/stat`, field 22).
pub fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields resume after the
    // last `)`, starting with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The start time of this process.
pub fn own_start() -> Option<i64> {
    process_start(std::process::id())
}

/// True when the process that owns a run is still the one running.
pub fn owner_alive(pid: Option<i64>, start: Option<i64>) -> bool {
    let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()) else {
        return false;
    };
    match (process_start(pid), start) {
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Marks runs of dead engines interrupted; returns their ids.
pub fn recover(store: &mut Store) -> Result<Vec<String>, StoreError> {
    let mut recovered = Vec::new();
    for owner in store.running_runs()? {
        if owner_alive(owner.pid, owner.start) {
            continue;
        }
        let id = owner.id;
        store.interrupt_run(&id)?;
        crate::plugin::kill_marked_prefix(&format!("{id}-"));
        crate::contain::kill_run(&format!("{id}-"));
        tracing::warn!(run = %id, "run interrupted: the process executing it is gone");
        recovered.push(id);
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = i64::from(std::process::id());
        let start = own_start();
        assert!(start.is_some());
        assert!(owner_alive(Some(me), start));
        assert!(!owner_alive(Some(me), start.map(|s| s + 1)));
        assert!(!owner_alive(Some(i64::from(u32::MAX - 1)), None));
    }
}
