//! The resident memory of a worker's process group, from /proc, with a bounded amount of work.
//!
//! A worker leads its own process group, and what it starts stays in that group unless it moves
//! itself out. The group's members are found by walking the worker's descendants
//! (`/proc/PID/task/TID/children`) and keeping those whose group is the worker's; processes
//! orphaned by the worker (reparented to clusterd, the subreaper) are not descendants any more
//! and are not counted. At most [`MAX_GROUP_PROCESSES`] processes and [`MAX_TASKS`] threads of
//! each are looked at, so one refresh of `status` costs a few dozen small reads per worker
//! whatever the worker does.

use std::collections::VecDeque;

/// The most processes of one worker's group read per refresh.
pub const MAX_GROUP_PROCESSES: usize = 64;
/// The most threads of one process whose children are listed.
pub const MAX_TASKS: usize = 64;

/// The resident bytes of the group led by `leader` (its `VmRSS` and its descendants' in the same
/// group); `None` if the leader's /proc entry cannot be read (it is gone).
pub fn group_rss(leader: u32) -> Option<u64> {
    let page = page_size();
    let mut total = 0u64;
    let mut queue = VecDeque::from([leader]);
    let mut seen = 0;
    while let Some(pid) = queue.pop_front() {
        if seen == MAX_GROUP_PROCESSES {
            break;
        }
        seen += 1;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        let Some((pgrp, pages)) = stat.ok().as_deref().and_then(pgrp_and_rss) else {
            if pid == leader {
                return None;
            }
            continue; // exited meanwhile
        };
        if pgrp == leader {
            total = total.saturating_add(pages.saturating_mul(page));
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.take(MAX_TASKS).flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            queue.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    Some(total)
}

/// The process group (field 5) and the resident pages (field 24) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses itself, so the
/// fields are counted from its last `)`.
fn pgrp_and_rss(stat: &str) -> Option<(u32, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    Some((fields.get(2)?.parse().ok()?, fields.get(21)?.parse().ok()?))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line =
            "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 300 1000000 777 18446744073709551615";
        assert_eq!(pgrp_and_rss(line), Some((4240, 777)));
        assert_eq!(pgrp_and_rss("4242 (x) S 1"), None);
        assert_eq!(pgrp_and_rss("garbage"), None);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        // The test binary may not lead its group: the walk then counts nothing, but answers.
        let me = std::process::id();
        assert!(group_rss(me).is_some());
        assert_eq!(group_rss(u32::MAX), None, "no such process");
    }
}
