//! How big a batch's targets are, to start the biggest first: a dump's tree by its
//! resident memory, a restore by its pages images. Estimates read before the batch
//! starts; a target that cannot be measured counts as 0 (it goes last).

use std::path::Path;

/// Bytes resident in the tree rooted at `pid`: the sum of each process's RSS
/// (`/proc/PID/statm`), walking `/proc/PID/task/TID/children`. Memory shared
/// between the tree's processes counts once per process, as criu dumps it.
pub(crate) fn tree_rss(pid: i32) -> u64 {
    let page = crate::info::page_size();
    let mut total = 0;
    let mut seen = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        total += resident_pages(p) * page;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    total
}

/// Bytes of memory pages in an images directory: its `pages-*.img` files.
pub(crate) fn image_pages(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn resident_pages(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_tree_is_resident_and_a_missing_one_is_zero() {
        assert!(tree_rss(std::process::id() as i32) > 1 << 20);
        assert_eq!(tree_rss(i32::MAX), 0);
    }

    #[test]
    fn image_pages_counts_only_pages_images() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages-1.img"), vec![0u8; 8192]).unwrap();
        std::fs::write(dir.path().join("pages-2.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("pagemap-1.img"), vec![0u8; 100]).unwrap();
        assert_eq!(image_pages(dir.path()), 12288);
        assert_eq!(image_pages(&dir.path().join("nope")), 0);
    }
}
