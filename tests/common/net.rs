//! Fixtures for real-criu tests of TCP servers: servers started in their own session,
//! a small RESP client for redis, the TCP sockets a process owns, criu's nftables
//! lock tables.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// How long a fixture waits for a server to come up or a socket to settle.
pub const SETTLE: Duration = Duration::from_secs(10);

/// A loopback port free right now: the kernel picks it for a listener we drop.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A server process of this test: its own session, stdio on /dev/null, no fd of
/// ours. Killed and reaped on drop.
pub struct Server {
    child: Option<Child>,
    pub pid: i32,
}

impl Server {
    /// Starts `cmd` as a server as criu wants a tree without `shell_job`: a session
    /// of its own and only its own files (the test harness leaks fds into children).
    pub fn start(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Server {
            pid: child.id() as i32,
            child: Some(child),
        }
    }

    /// Waits until the server listens on `port`, failing if it exits first.
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + SETTLE;
        loop {
            if tcp_sockets_of(self.pid)
                .iter()
                .any(|s| s.state == LISTEN && s.local_port == port)
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "server {} exited before listening on {port}: {status}",
                    self.pid
                );
            }
            assert!(
                Instant::now() < deadline,
                "server {} does not listen on {port} within {SETTLE:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reaps the server after criu killed it (a dump without leave_running), so its
    /// pid is free for a restore.
    pub fn reap_dumped(&mut self) {
        let mut child = self.child.take().expect("server already reaped");
        let deadline = Instant::now() + SETTLE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waitpid") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "dumped server {} still runs",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !status.success(),
            "the dumped server should have been killed: {status}"
        );
    }

    /// Whether the server still runs (not exited, not a zombie).
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A restored tree's root, re-parented to us (the subreaper). Killed and reaped on
/// drop.
pub struct RestoredTree {
    pub pid: i32,
}

impl Drop for RestoredTree {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGKILL);
        // By pid, never -1: tokio reaps its own children (criu).
        let _ = waitpid(pid, None);
    }
}

/// A perl server that listens on 127.0.0.1:PORT and serves one connection at a
/// time; for each line received it answers with a counter shared by all
/// connections (1, 2, ...), so a restored copy shows where the original stopped.
pub fn counter_server(port: u16) -> Server {
    const SCRIPT: &str = r#"
        use strict;
        use IO::Socket::INET;
        my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],
            Proto => "tcp", Listen => 5, ReuseAddr => 1) or die "listen: $!";
        my $n = 0;
        while (1) {
            my $c = $l->accept or next;
            $c->autoflush(1);
            while (defined(my $line = <$c>)) {
                $n++;
                print $c "$n\n";
            }
            close $c;
        }
    "#;
    let mut cmd = Command::new("perl");
    cmd.args(["-e", SCRIPT, &port.to_string()]);
    let mut server = Server::start(cmd);
    server.wait_listening(port);
    server
}

/// A client of [`counter_server`]: one connection, read timeouts on every answer.
pub struct CounterClient {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl CounterClient {
    /// Connects with `timeout` as the read timeout of every answer.
    pub fn connect(port: u16, timeout: Duration) -> CounterClient {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), SETTLE)
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_write_timeout(Some(timeout)).unwrap();
        CounterClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Sends one line and returns the counter the server answers with.
    pub fn next(&mut self) -> io::Result<u64> {
        self.stream.write_all(b"next\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.trim_end()
            .parse()
            .map_err(|_| io::Error::other(format!("not a counter: {line:?}")))
    }

    /// The connection's local port (ours, the client's).
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }
}

/// `/proc/net/tcp` state codes.
pub const ESTABLISHED: u8 = 0x01;
pub const LISTEN: u8 = 0x0A;

/// One TCP socket as `/proc/net/tcp` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    pub inode: u64,
}

/// The TCP sockets (IPv4 and IPv6) that `pid` holds an fd of.
pub fn tcp_sockets_of(pid: i32) -> Vec<TcpSocket> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            let sock = TcpSocket {
                local_port: port(f[1]),
                remote_port: port(f[2]),
                state: u8::from_str_radix(f[3], 16).unwrap_or(0),
                inode: f[9].parse().unwrap_or(0),
            };
            if sock.inode != 0 && inodes.contains(&sock.inode) {
                out.push(sock);
            }
        }
    }
    out
}

/// Waits until every TCP socket `pid` holds is a listener: a client that just
/// closed its connection leaves the server's end for a moment, and criu refuses a
/// connected socket without `tcp_established`.
pub fn wait_only_listeners(pid: i32) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let socks = tcp_sockets_of(pid);
        if socks.iter().all(|s| s.state == LISTEN) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still holds connected sockets: {socks:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The nftables tables criu locks networks with (`CRIU-...`) that exist now.
pub fn criu_nft_tables() -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .expect("running nft list tables");
    assert!(out.status.success(), "nft list tables: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| t.starts_with("CRIU-"))
        .map(str::to_owned)
        .collect()
}

/// The nftables table a dump with the nftables lock made: `inet CRIU-<run id>` cut
/// to criu's 31 characters, the run id being the one the dump wrote into
/// `inventory.img`. Deleted on drop if still there, since a failed restore leaves it
/// and it would block the connection's peer for good.
pub struct NftLock {
    pub table: String,
}

impl NftLock {
    /// The lock table of the dump in `images`.
    pub fn of_dump(images: &Path) -> NftLock {
        let run_id = dump_run_id(images);
        let mut full = format!("inet CRIU-{run_id}");
        // criu formats the name into a 32-byte buffer.
        full.truncate(31);
        NftLock {
            table: full["inet ".len()..].to_owned(),
        }
    }

    pub fn exists(&self) -> bool {
        criu_nft_tables().contains(&self.table)
    }
}

impl Drop for NftLock {
    fn drop(&mut self) {
        if self.exists() {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &self.table])
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// The criu run id of the dump in `images`: `dump_criu_run_id` (field 13, a string)
/// of the inventory entry, a 36-character UUID.
fn dump_run_id(images: &Path) -> String {
    let bytes = std::fs::read(images.join("inventory.img")).expect("reading inventory.img");
    // Field 13, wire type 2 (tag 0x6a), length 36.
    bytes
        .windows(38)
        .find_map(|w| {
            let id = std::str::from_utf8(&w[2..]).ok()?;
            (w[0] == 0x6a && w[1] == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
                .then(|| id.to_owned())
        })
        .expect("no dump_criu_run_id in inventory.img")
}

/// A redis reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A minimal redis client speaking RESP over one connection.
pub struct Redis {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Redis {
    pub fn connect(port: u16) -> io::Result<Redis> {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), SETTLE)?;
        stream.set_read_timeout(Some(SETTLE))?;
        stream.set_write_timeout(Some(SETTLE))?;
        Ok(Redis {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut buf = Vec::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Self::encode(&mut buf, &args);
        self.stream.write_all(&buf)?;
        self.reply()
    }

    /// Sends `SET key:<i> value:<i>` for every `i` in `0..n`, pipelined in batches,
    /// and checks every reply is `OK`.
    pub fn set_many(&mut self, n: usize) -> io::Result<()> {
        const BATCH: usize = 1000;
        let mut i = 0;
        while i < n {
            let end = (i + BATCH).min(n);
            let mut buf = Vec::new();
            for k in i..end {
                let key = format!("key:{k}");
                let value = format!("value:{k}:{}", k.wrapping_mul(2_654_435_761));
                Self::encode(&mut buf, &[b"SET", key.as_bytes(), value.as_bytes()]);
            }
            self.stream.write_all(&buf)?;
            for _ in i..end {
                match self.reply()? {
                    Reply::Status(s) if s == "OK" => {}
                    other => return Err(io::Error::other(format!("SET answered {other:?}"))),
                }
            }
            i = end;
        }
        Ok(())
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn reply(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let bad = || io::Error::other(format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(len as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::new();
                    for _ in 0..len {
                        items.push(self.reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// Starts Debian's redis-server on 127.0.0.1:`port`, nothing persisted, `DEBUG`
/// allowed from loopback (for `DEBUG DIGEST`), and waits until it answers `PING`.
pub fn redis_server(port: u16) -> Server {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--enable-debug-command",
        "local",
    ]);
    let mut server = Server::start(cmd);
    server.wait_listening(port);
    let mut r = Redis::connect(port).expect("connecting to redis");
    let deadline = Instant::now() + SETTLE;
    // redis listens before it has loaded (nothing, here): wait until it serves.
    loop {
        match r.cmd(&["PING"]) {
            Ok(Reply::Status(s)) if s == "PONG" => break,
            other => assert!(
                Instant::now() < deadline,
                "redis does not answer PING: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(r);
    server
}

/// A workload in a shell job: `setsid sh -c 'WORKLOAD ... & wait; exec sleep ...'`.
/// The shell is the session and process-group leader and stays alive outside the
/// dumped tree (the workload, its child). Both are killed and reaped on drop.
pub struct ShellJob {
    shell: Server,
    /// The workload (the tree to dump).
    pub pid: i32,
    /// The shell: session leader of the workload.
    pub leader: i32,
    pub info: super::workload::Info,
}

impl super::Env {
    /// Starts a workload of `mib` MiB as a shell job (see [`ShellJob`]).
    pub fn shell_job_workload(&self, mib: usize) -> ShellJob {
        let info_path = self.next_info_path();
        let mut cmd = Command::new("sh");
        // After the workload dies the shell reaps it (its pid is free for a restore)
        // and lives on as the session leader.
        cmd.args([
            "-c",
            r#""$0" "$@" & wait; exec sleep 600"#,
            super::WORKLOAD.as_str(),
            &mib.to_string(),
            info_path.to_str().unwrap(),
        ]);
        let shell = Server::start(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            if let Ok(info) = super::workload::read_info(&info_path) {
                break info;
            }
            assert!(Instant::now() < deadline, "the shell job did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let children = super::children_of(shell.pid);
        assert_eq!(children.len(), 1, "the shell's children: {children:?}");
        let job = ShellJob {
            leader: shell.pid,
            pid: children[0],
            shell,
            info,
        };
        super::workload::assert_alive_and_intact(job.pid, &job.info)
            .unwrap_or_else(|e| panic!("shell job {}: {e}", job.pid));
        job
    }
}

impl ShellJob {
    /// Waits until the shell has reaped its dumped (killed) workload.
    pub fn wait_reaped(&self) {
        let deadline = Instant::now() + SETTLE;
        while super::exists(self.pid) {
            assert!(
                Instant::now() < deadline,
                "the shell did not reap its workload {}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn shell_running(&mut self) -> bool {
        self.shell.running()
    }
}

impl Drop for ShellJob {
    fn drop(&mut self) {
        // The workload first, while the shell still reaps it.
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let deadline = Instant::now() + SETTLE;
        while super::exists(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
