//! The setters the builders share, as macros: each builder says which groups apply
//! to it (`base_setters!`, `tree_setters!`, ...).

macro_rules! flag {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, on: bool) -> Self {
            self.c.opts.$name = Some(on);
            self
        }
    };
}

/// Setters every builder has: where images, work dir and log go, our timeout, raw edits.
macro_rules! base_setters {
    () => {
        /// The images directory, by path. criu reads or writes its images there; it is
        /// also the work directory (log, stats) unless [`work_dir`](Self::work_dir) is set.
        pub fn images_dir(mut self, path: impl Into<PathBuf>) -> Self {
            self.c.images = Some(Dir::Path(path.into()));
            self
        }

        /// The images directory, as an open directory fd (kept open until criu answers).
        pub fn images_dir_fd(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.images = Some(Dir::Fd(fd.into()));
            self
        }

        /// Where criu writes its log and stats (default: the images directory).
        pub fn work_dir(mut self, path: impl Into<PathBuf>) -> Self {
            self.c.work = Some(Dir::Path(path.into()));
            self
        }

        /// The work directory as an open directory fd.
        pub fn work_dir_fd(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.work = Some(Dir::Fd(fd.into()));
            self
        }

        /// Have criu log to a file of this name inside the work directory (no `/`).
        ///
        /// By default dumps, pre-dumps and restores log to criu's stderr, which this
        /// crate reads: a refusal carries the error lines either way, and no log file
        /// lands among the images (making one costs a dump about 1 ms of inode
        /// allocation under load; `criu dump` on the command line logs to stderr too).
        /// Requests whose criu may outlive the call (page servers, and restores with
        /// [`exec_cmd`](crate::RestoreOptions::exec_cmd)) log to `page-server.log` or
        /// `restore.log`, and checks to a scratch `check.log` or to `cpuinfo.log`.
        /// Turning [`log_to_stderr`](Self::log_to_stderr) off gives `dump.log`,
        /// `pre-dump.log` or `restore.log`. criu before 3.19 cannot log to stderr over
        /// RPC and writes `criu.log` in the work dir instead; a refusal then carries its
        /// error lines.
        pub fn log_file(mut self, name: impl Into<String>) -> Self {
            self.c.log_file = Some(name.into());
            self
        }

        /// criu's log level, 0 (nothing) to 4 (debug). Default:
        /// [`DEFAULT_LOG_LEVEL`](crate::options::DEFAULT_LOG_LEVEL).
        pub fn log_level(mut self, level: u8) -> Self {
            self.c.opts.log_level = Some(i32::from(level));
            self
        }

        flag!(
            /// Log to criu's stderr instead of a file (criu 3.19+). This crate keeps the
            /// last lines and every error line for error messages, and emits each line
            /// as a `tracing` debug event (target `criu_swrk::criu_stderr`). The default
            /// for dumps, pre-dumps and restores (see [`log_file`](Self::log_file));
            /// setting it explicitly asks for criu 3.19 or later.
            log_to_stderr
        );

        /// Our own limit for the whole request. When it elapses the request is rolled
        /// back (criu answers its next hook with failure) and the call fails with
        /// [`Error::Timeout`](crate::Error::Timeout). Not criu's `--timeout`: see `freeze_timeout`.
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.c.timeout = Some(timeout);
            self
        }

        /// Cancels the request when `token` is cancelled: like a timeout, the request
        /// is rolled back (criu answers its next hook with failure) and the call fails
        /// with [`Error::Cancelled`](crate::Error::Cancelled).
        pub fn cancel_on(mut self, token: CancellationToken) -> Self {
            self.c.cancel = Some(token);
            self
        }

        /// Edits the raw `criu_opts` message just before it is sent, for fields without
        /// a typed setter. Runs after validation; `notify_scripts` stays on.
        pub fn raw(mut self, edit: impl FnOnce(&mut CriuOpts) + Send + 'static) -> Self {
            self.c.raw.push(Box::new(edit));
            self
        }
    };
}

/// Setters of requests that act on a process tree (dump, pre-dump, restore).
macro_rules! tree_setters {
    () => {
        flag!(
            /// The tree is a shell job: its session or process group leader is outside
            /// it, or it has a controlling terminal.
            shell_job
        );
        flag!(
            /// Allow external unix sockets (peers outside the tree).
            ext_unix_sk
        );
        flag!(
            /// Dump/restore established TCP connections (`--tcp-established`).
            tcp_established
        );
        flag!(
            /// Close established TCP connections instead of restoring them.
            tcp_close
        );
        flag!(
            /// Handle file locks.
            file_locks
        );
        flag!(
            /// Allow link-remap of deleted-but-open files.
            link_remap
        );
        flag!(
            /// Allow device files criu cannot resolve (`--evasive-devices`).
            evasive_devices
        );
        flag!(
            /// Detect external mounts automatically.
            auto_ext_mnt
        );
        flag!(
            /// Allow external mounts with shared propagation.
            ext_sharing
        );
        flag!(
            /// Allow external mounts with master propagation.
            ext_masters
        );
        flag!(
            /// Deduplicate pages against parent images.
            auto_dedup
        );
        flag!(
            /// Leave the tree stopped (SIGSTOP) after the dump or restore (criu 3.19+).
            leave_stopped
        );
        flag!(
            /// Post-copy: leave memory for a lazy-pages daemon (see criu's docs).
            lazy_pages
        );
        flag!(
            /// Print statistics in the log (criu 3.19+).
            display_stats
        );
        flag!(
            /// Run criu's checks as an unprivileged user (criu 3.18+).
            unprivileged
        );
        flag!(
            /// Skip the file rwx access check (criu 3.18+).
            skip_file_rwx_check
        );
        flag!(
            /// A tty slave whose master is outside the tree (a console held by the
            /// caller). Dump: accept it. Restore: make a new pty pair and hand its
            /// master to the `orphan-pts-master` hook.
            orphan_pts_master
        );
        tls_setters!();

        /// Declares an external resource (criu's `--external`, e.g. `mnt[/x]:key`,
        /// `file[inode]`, `net[inode]:name`). Repeatable.
        pub fn external(mut self, spec: impl Into<String>) -> Self {
            self.c.opts.external.push(spec.into());
            self
        }

        /// How cgroups are handled.
        pub fn manage_cgroups(mut self, mode: CgroupMode) -> Self {
            self.c.opts.manage_cgroups_mode = Some(mode.wire() as i32);
            self
        }

        /// How the network is locked (criu 3.16+).
        pub fn network_lock(mut self, method: NetworkLock) -> Self {
            self.c.opts.network_lock = Some(match method {
                NetworkLock::Iptables => CriuNetworkLockMethod::Iptables,
                NetworkLock::Nftables => CriuNetworkLockMethod::Nftables,
                NetworkLock::Skip => CriuNetworkLockMethod::Skip,
            } as i32);
            self
        }

        /// Mounts of this file system type may be dumped/restored as-is. Repeatable.
        pub fn enable_fs(mut self, fs: impl Into<String>) -> Self {
            self.c.opts.enable_fs.push(fs.into());
            self
        }

        /// Skip this mount point. Repeatable.
        pub fn skip_mnt(mut self, path: impl Into<String>) -> Self {
            self.c.opts.skip_mnt.push(path.into());
            self
        }

        /// Largest ghost (deleted) file criu copies into the images, in bytes
        /// (criu's default: 1 MiB).
        pub fn ghost_limit(mut self, bytes: u32) -> Self {
            self.c.opts.ghost_limit = Some(bytes);
            self
        }

        /// CPU capabilities to check (criu's `--cpu-cap` bit mask).
        pub fn cpu_cap(mut self, mask: u32) -> Self {
            self.c.opts.cpu_cap = Some(mask);
            self
        }

        /// criu's own `--timeout` (seconds) for freezing/seizing the tree.
        pub fn freeze_timeout(mut self, secs: u32) -> Self {
            self.c.opts.timeout = Some(secs);
            self
        }

        /// criu's configuration file for this request (`--config`); its settings
        /// override RPC settings.
        pub fn config_file(mut self, path: impl Into<String>) -> Self {
            self.c.opts.config_file = Some(path.into());
            self
        }

        /// A cgroup yard: where criu mounts cgroup controllers (criu 3.14+).
        pub fn cgroup_yard(mut self, path: impl Into<String>) -> Self {
            self.c.opts.cgroup_yard = Some(path.into());
            self
        }

    };
}

/// TLS setters: page-server connections of dumps, restores and page servers.
macro_rules! tls_setters {
    () => {
        flag!(
            /// Use TLS for page-server connections (criu 3.13+).
            tls
        );
        flag!(
            /// Do not verify the TLS peer's common name.
            tls_no_cn_verify
        );

        /// TLS CA certificate file.
        pub fn tls_cacert(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_cacert = Some(path.into());
            self
        }

        /// TLS certificate revocation list: peer certificates it lists are refused.
        pub fn tls_cacrl(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_cacrl = Some(path.into());
            self
        }

        /// TLS certificate file.
        pub fn tls_cert(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_cert = Some(path.into());
            self
        }

        /// TLS private key file.
        pub fn tls_key(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_key = Some(path.into());
            self
        }
    };
}

/// Setters of requests that freeze and read a tree (dump, pre-dump).
macro_rules! dump_setters {
    () => {
        flag!(
            /// Keep the tree running after the dump (otherwise criu kills it once the
            /// `post-dump` hook agreed).
            leave_running
        );
        flag!(
            /// Track memory changes for later incremental dumps (needs soft-dirty).
            track_mem
        );
        flag!(
            /// Skip in-flight TCP connections.
            tcp_skip_in_flight
        );
        flag!(
            /// Resolve inotify watch paths by scanning, not by handles.
            force_irmap
        );

        /// The parent images (a previous pre-dump), relative to the images directory,
        /// e.g. `../1`.
        pub fn parent_images(mut self, rel: impl Into<String>) -> Self {
            self.c.opts.parent_img = Some(rel.into());
            self
        }

        /// Freeze the tree with this freezer cgroup instead of ptrace-stopping tasks.
        pub fn freeze_cgroup(mut self, path: impl Into<String>) -> Self {
            self.c.opts.freeze_cgroup = Some(path.into());
            self
        }

        /// Dump only these cgroup controllers. Repeatable.
        pub fn cgroup_dump_controller(mut self, name: impl Into<String>) -> Self {
            self.c.opts.cgroup_dump_controller.push(name.into());
            self
        }

        /// Where to look for inotify watch paths. Repeatable.
        pub fn irmap_scan_path(mut self, path: impl Into<String>) -> Self {
            self.c.opts.irmap_scan_paths.push(path.into());
            self
        }

        /// Send memory pages to a page server instead of writing them locally.
        pub fn page_server(mut self, address: impl Into<String>, port: u16) -> Self {
            let ps = self.c.opts.ps.get_or_insert_with(Default::default);
            ps.address = Some(address.into());
            ps.port = Some(i32::from(port));
            self
        }

        /// Send memory pages over this connected socket (passed to criu).
        ///
        /// The fd goes into criu's fd table when criu starts, so only the request
        /// that starts criu can pass it: in a pre-dump loop, the first pre-dump (the
        /// options given to [`Criu::pre_dump`](crate::Criu::pre_dump)); later
        /// iterations and the final dump are refused with
        /// [`Error::InvalidOptions`](crate::Error::InvalidOptions).
        pub fn page_server_fd(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.opts.ps.get_or_insert_with(CriuPageServerInfo::default);
            self.c.page_server_fd = Some(fd.into());
            self
        }

        /// A unix socket fd of ours where criu keeps pidfds across pre-dump
        /// iterations, to detect pid reuse (criu 3.16+). Passed as
        /// [`page_server_fd`](Self::page_server_fd) is: only by the request that
        /// starts criu.
        pub fn pidfd_store(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.pidfd_store = Some(fd.into());
            self
        }
    };
}
