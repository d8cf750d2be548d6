/*
 * The least a driver of `criu swrk` can do, for scripts/bench to measure criu's RPC
 * mode itself: fork + exec `criu swrk 3` with one end of a SOCK_SEQPACKET pair at
 * fd 3, send one DUMP request (leave running, log level 2, hooks on), agree to every
 * hook, read the answer, reap criu. No options, no checks beyond the syscalls.
 *
 * Usage: swrk-min CRIU PID IMAGES_DIR   (exit status 0 when criu said success)
 *
 * The protobuf bytes are encoded by hand (field numbers from proto/rpc.proto).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static size_t varint(unsigned char *b, unsigned long v)
{
	size_t n = 0;
	do {
		unsigned char c = v & 0x7f;
		v >>= 7;
		b[n++] = c | (v ? 0x80 : 0);
	} while (v);
	return n;
}

static size_t field_varint(unsigned char *b, unsigned num, unsigned long v)
{
	size_t n = varint(b, num << 3);
	return n + varint(b + n, v);
}

static size_t field_bytes(unsigned char *b, unsigned num, const void *p, size_t len)
{
	size_t n = varint(b, num << 3 | 2);
	n += varint(b + n, len);
	memcpy(b + n, p, len);
	return n + len;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: swrk-min CRIU PID IMAGES_DIR\n");
		return 2;
	}
	int dir = open(argv[3], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		perror(argv[3]);
		return 1;
	}
	/* criu_opts: images_dir_fd 1, pid 2, leave_running 3, log_level 9, log_file 10,
	 * notify_scripts 12. criu_req: type 1 (DUMP = 1), opts 2. */
	unsigned char opts[128], req[160];
	size_t on = 0, rn = 0;
	on += field_varint(opts + on, 1, dir);
	on += field_varint(opts + on, 2, strtoul(argv[2], NULL, 10));
	on += field_varint(opts + on, 3, 1);
	on += field_varint(opts + on, 9, 2);
	on += field_bytes(opts + on, 10, "dump.log", 8);
	on += field_varint(opts + on, 12, 1);
	rn += field_varint(req + rn, 1, 1);
	rn += field_bytes(req + rn, 2, opts, on);

	int sk[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sk)) {
		perror("socketpair");
		return 1;
	}
	pid_t criu = fork();
	if (criu == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		dup2(sk[1], 3); /* dup2 clears close-on-exec on fd 3 */
		execl(argv[1], argv[1], "swrk", "3", (char *)NULL);
		_exit(127);
	}
	close(sk[1]);
	if (send(sk[0], req, rn, 0) != (ssize_t)rn) {
		perror("send");
		return 1;
	}
	/* criu_resp: type 1 (NOTIFY = 6), success 2. A notify is answered with
	 * criu_req { type: NOTIFY, notify_success: true }. */
	unsigned char buf[1 << 16];
	int ok = 0;
	for (;;) {
		ssize_t n = recv(sk[0], buf, sizeof buf, 0);
		if (n <= 0)
			break;
		if (n >= 2 && buf[0] == 0x08 && buf[1] == 0x06) {
			unsigned char ans[8];
			size_t an = field_varint(ans, 1, 6);
			an += field_varint(ans + an, 3, 1);
			send(sk[0], ans, an, 0);
			continue;
		}
		ok = n >= 4 && buf[2] == 0x10 && buf[3] == 0x01;
		break;
	}
	int status;
	waitpid(criu, &status, 0);
	return ok && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
