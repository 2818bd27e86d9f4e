//! The resident memory of a worker's process tree, for `--max-memory`: the worker and every
//! process it started that is still its descendant, found through `/proc/<pid>/task/<tid>/children`
//! and summed from `/proc/<pid>/statm` (resident pages, as `ps` shows RSS: shared pages count in
//! every process that maps them). A few small reads per process, once a second: cheaper than a
//! scan of `/proc` for the process group, and a descendant that left the group is still counted.
//! A process that double-forked away (reparented to clusterd) is not.

/// The most processes of one tree visited per reading (a fork bomb does not make it slow).
pub const MAX_TREE: usize = 1024;

/// The RSS of `pid` and its descendants, in bytes; `None` if `pid` itself cannot be read (it is
/// gone).
pub fn tree_rss(pid: u32) -> Option<u64> {
    let page = page_size();
    let mut total = resident_pages(pid)? * page;
    let mut seen = vec![pid];
    let mut next = children(pid);
    while let Some(child) = next.pop() {
        if seen.len() >= MAX_TREE || seen.contains(&child) {
            continue;
        }
        seen.push(child);
        total += resident_pages(child).unwrap_or(0) * page;
        next.extend(children(child));
    }
    Some(total)
}

fn resident_pages(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The children of every thread of `pid` (a child belongs to the thread that forked it).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else { continue };
        out.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out
}

fn page_size() -> u64 {
    let size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten();
    size.and_then(|s| u64::try_from(s).ok()).filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_and_a_child() {
        let own = tree_rss(std::process::id()).expect("own statm");
        assert!(own > 1024 * 1024, "{own}");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        // The child appears in our children file once forked; its RSS adds to the tree's.
        let with_child = tree_rss(std::process::id()).expect("own statm");
        let alone = tree_rss(child.id()).expect("child statm");
        let _ = child.kill();
        let _ = child.wait();
        assert!(alone > 0);
        assert!(with_child >= alone, "{with_child} < {alone}");
        assert_eq!(tree_rss(u32::MAX), None, "no such process");
    }
}
