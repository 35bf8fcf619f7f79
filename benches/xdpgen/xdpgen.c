// SPDX-License-Identifier: GPL-2.0
// xdpgen: sends COUNT copies of one frame out of a veth end (or any device
// with ndo_xdp_xmit) as XDP frames, without an skb, the way a NIC with a
// native XDP driver delivers packets to its peer; optionally each with a
// source address of its own (-R, like `hping3 --rand-source`) and paced to a
// rate (-r, like a flood of a given size).
//
// How: redirect.bpf.o (bpf_redirect(ifindex, 0)) is run with BPF_PROG_RUN
// and BPF_F_TEST_XDP_LIVE_FRAMES (kernel >= 5.18): the kernel runs it on
// COUNT frames built from the one given, in batches, and really redirects
// them. A veth peer receives them through its XDP path, so it must have an
// XDP program attached in native (driver) mode.
//
// -R: the program rewrites each frame's source address from its frame
// number (FIRST, FIRST + 1, ...; -S, default: from the clock), through a
// bijection, so no two frames of a run (fewer than 2^32) share a source,
// and runs given disjoint ranges share none; the TCP sequence number too;
// the IPv4 header and TCP/UDP checksums are kept right (redirect.bpf.c).
//
// -r RATE: frames per second. Every INTERVAL (-I, microseconds, default
// 1000) a sender wakes (an absolute CLOCK_MONOTONIC deadline, so waking late
// does not slow the average) and sends, in one BPF_PROG_RUN (repeat = N),
// the frames due by then: RATE x the time since the start, minus those
// already sent. Without -r, all COUNT frames go at once, as fast as the
// kernel can.
//
// -A IF: a spare interface of the namespace (say, one end of a veth pair
// left down) to which xdpgen attaches its program in generic mode for the
// run. Each BPF_PROG_RUN of an XDP program puts the program in the kernel's
// XDP dispatcher and takes it out again, and each change waits for an RCU
// grace period: about 25 ms a call (kernel 6.18), so a paced run would
// send in bursts of 25 ms worth of frames. A program attached to an
// interface stays in the dispatcher, and the calls skip that wait (about
// 0.2 ms a call of 120 frames). IF must receive no traffic: the program
// would redirect it. The other way around that wait: several sender
// threads taking turns (-T, tick i by thread i mod T), whose waits overlap.
// `largest` in the output is the largest burst (frames of one call).
// Run it in the network namespace that holds the sending interface (the
// redirect resolves the ifindex there). Loading needs no bpffs.
//
// Usage: xdpgen -i IF -n COUNT -s SRC -d DST -M DST_MAC [-k udp|syn]
//               [-m SRC_MAC] [-p SPORT] [-P DPORT] [-b BATCH] [-R] [-S FIRST]
//               [-r RATE] [-I INTERVAL_US] [-A SPARE_IF] [-T THREADS]
//               [-o redirect.bpf.o]
// SRC and DST are both IPv4 or both IPv6. Prints one line on stdout:
//   frames=N len=BYTES seconds=WALL mpps=RATE fps=RATE runs=CALLS largest=FRAMES
//   busy=SECONDS threads=T first=FIRST
// (busy: the time spent inside BPF_PROG_RUN, summed over the threads; it
// includes the receiving side's softirq work when it runs on the sender's
// CPU, and the kernel's sleep at the end of each call)
// N is the number of frames the program ran on; a frame the device could
// not take is dropped silently, so the device's counters (ethtool -S:
// tx_queue_0_xdp_xmit and _errors on a veth) say how many really left.
#include <arpa/inet.h>
#include <ctype.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef BPF_F_TEST_XDP_LIVE_FRAMES
#define BPF_F_TEST_XDP_LIVE_FRAMES (1U << 1)
#endif

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "xdpgen: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

__attribute__((noreturn)) static void usage(void)
{
	fprintf(stderr,
		"usage: xdpgen -i IF -n COUNT -s SRC -d DST -M DST_MAC [-k udp|syn]\n"
		"              [-m SRC_MAC] [-p SPORT] [-P DPORT] [-b BATCH] [-R] [-S FIRST]\n"
		"              [-r RATE] [-I INTERVAL_US] [-A SPARE_IF] [-T THREADS] [-o OBJ]\n"
		"  -i IF       the interface to send out of (run in its namespace)\n"
		"  -n COUNT    frames to send\n"
		"  -k KIND     udp (default) or syn (TCP SYN)\n"
		"  -s, -d      source and destination address (both IPv4 or both IPv6)\n"
		"  -m, -M      source MAC (default: IF's) and destination MAC\n"
		"  -p, -P      source and destination port (default 40000, 9)\n"
		"  -b BATCH    frames per batch (default 64, at most 256)\n"
		"  -R          a source address of its own per frame (like hping3 --rand-source)\n"
		"  -S FIRST    with -R: the first frame number (default: from the clock)\n"
		"  -r RATE     frames per second (default: as fast as possible)\n"
		"  -I US       with -r: microseconds between sends (default 1000)\n"
		"  -A IF       a spare interface (no traffic) to hold the program on: smooth pacing\n"
		"  -T THREADS  sender threads taking turns (default 1)\n"
		"  -o OBJ      the redirect program (default: redirect.bpf.o beside xdpgen)\n");
	exit(2);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p + 2, v);
}

// The ones' complement sum of big-endian 16-bit words.
static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	for (; len > 1; p += 2, len -= 2)
		sum += (uint32_t)p[0] << 8 | p[1];
	if (len)
		sum += (uint32_t)p[0] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

// Exactly six two-digit hex bytes separated by colons.
static void parse_mac(const char *text, uint8_t mac[6])
{
	if (strlen(text) != 17)
		die("not a MAC address: %s", text);
	for (int i = 0; i < 17; i++) {
		if (i % 3 == 2 ? text[i] != ':' : !isxdigit((unsigned char)text[i]))
			die("not a MAC address: %s", text);
	}
	for (int i = 0; i < 6; i++)
		mac[i] = strtoul((char[]){text[3 * i], text[3 * i + 1], 0}, NULL, 16);
}

static void mac_of(const char *ifname, uint8_t mac[6])
{
	struct ifreq ifr = {};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0)
		die("socket: %s", strerror(errno));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
		die("cannot read the MAC address of %s: %s", ifname, strerror(errno));
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	close(fd);
}

static unsigned long number(const char *text, const char *what, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-' || v > max)
		die("bad %s: %s", what, text);
	return v;
}

// Builds the frame into buf; returns its length (at least 60 bytes, the
// Ethernet minimum without FCS; the IP length excludes the padding).
static size_t build(uint8_t *buf, int family, int syn, const uint8_t *src, const uint8_t *dst,
		    const uint8_t smac[6], const uint8_t dmac[6], uint16_t sport, uint16_t dport)
{
	size_t alen = family == AF_INET ? 4 : 16;
	size_t iplen = family == AF_INET ? 20 : 40;
	size_t l4len = syn ? 20 : 8;
	uint8_t proto = syn ? 6 : 17;
	uint8_t *ip = buf + 14, *l4 = ip + iplen;
	uint32_t sum;
	uint16_t csum;

	memset(buf, 0, 128);
	memcpy(buf, dmac, 6);
	memcpy(buf + 6, smac, 6);
	put16(buf + 12, family == AF_INET ? 0x0800 : 0x86dd);

	if (family == AF_INET) {
		ip[0] = 0x45;
		put16(ip + 2, iplen + l4len);
		put16(ip + 6, 0x4000); // DF
		ip[8] = 64;
		ip[9] = proto;
		memcpy(ip + 12, src, 4);
		memcpy(ip + 16, dst, 4);
		put16(ip + 10, fold(sum16(ip, 20, 0)));
	} else {
		ip[0] = 0x60;
		put16(ip + 4, l4len);
		ip[6] = proto;
		ip[7] = 64;
		memcpy(ip + 8, src, 16);
		memcpy(ip + 24, dst, 16);
	}

	put16(l4, sport);
	put16(l4 + 2, dport);
	if (syn) {
		put32(l4 + 4, 0x12345678); // sequence number
		l4[12] = 5 << 4;	   // data offset: 20 bytes, no options
		l4[13] = 0x02;		   // SYN
		put16(l4 + 14, 64240);	   // window
	} else {
		put16(l4 + 4, l4len);
	}
	// Pseudo-header (addresses, protocol, length), then the L4 header.
	sum = sum16(src, alen, 0);
	sum = sum16(dst, alen, sum);
	sum += proto + l4len;
	csum = fold(sum16(l4, l4len, sum));
	if (!syn && csum == 0)
		csum = 0xffff;
	put16(l4 + (syn ? 16 : 6), csum);

	size_t len = 14 + iplen + l4len;
	return len < 60 ? 60 : len;
}

static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

// The run, shared by the sender threads.
#define MAX_THREADS 256
static struct {
	int prog_fd;
	const uint8_t *frame;
	size_t len;
	unsigned long batch, count, rate, threads;
	long interval_ns;
	struct timespec t0;
	pthread_mutex_t lock;
	unsigned long claimed; // frames handed to a sender (under lock)
	unsigned long runs, largest;
	double busy; // seconds inside BPF_PROG_RUN, summed over threads
} run = { .lock = PTHREAD_MUTEX_INITIALIZER };

static double since(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) + (b->tv_nsec - a->tv_nsec) / 1e9;
}

// Claims the frames due now (all that are left without a rate): 0 when
// none is due yet; ULONG_MAX when every frame has been claimed.
static unsigned long claim(void)
{
	unsigned long n;
	pthread_mutex_lock(&run.lock);
	if (run.claimed >= run.count) {
		n = ULONG_MAX;
	} else if (!run.rate) {
		n = run.count - run.claimed;
	} else {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		double d = run.rate * since(&run.t0, &now);
		unsigned long due = d < (double)run.count ? (unsigned long)d : run.count;
		n = due > run.claimed ? due - run.claimed : 0;
	}
	if (n != ULONG_MAX) {
		// repeat is an int: very large counts go in several runs.
		if (n > 1UL << 30)
			n = 1UL << 30;
		run.claimed += n;
	}
	pthread_mutex_unlock(&run.lock);
	return n;
}

// Sender thread i of run.threads: with a rate, it handles ticks i, i + T,
// i + 2T, ... (T threads, a tick every interval from t0), so the threads
// take turns (see -A for why several may help).
static void *sender(void *arg)
{
	unsigned long i = (unsigned long)arg;
	struct timespec wake = run.t0;
	long step = run.interval_ns * run.threads, offset = run.interval_ns * (i + 1);

	wake.tv_sec += offset / 1000000000;
	wake.tv_nsec += offset % 1000000000;
	for (;;) {
		if (run.rate) {
			wake.tv_sec += wake.tv_nsec / 1000000000;
			wake.tv_nsec %= 1000000000;
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &wake, NULL) == EINTR)
				;
			wake.tv_sec += step / 1000000000;
			wake.tv_nsec += step % 1000000000;
		}
		unsigned long n = claim();
		if (n == ULONG_MAX)
			return NULL;
		if (!n)
			continue;
		struct timespec r0, r1;
		clock_gettime(CLOCK_MONOTONIC, &r0);
		LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = run.frame, .data_size_in = run.len,
			    .repeat = n, .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
			    .batch_size = run.batch);
		if (bpf_prog_test_run_opts(run.prog_fd, &opts))
			die("BPF_PROG_RUN (live frames) failed: %s", strerror(errno));
		clock_gettime(CLOCK_MONOTONIC, &r1);
		pthread_mutex_lock(&run.lock);
		run.busy += since(&r0, &r1);
		run.runs++;
		if (n > run.largest)
			run.largest = n;
		pthread_mutex_unlock(&run.lock);
	}
}

int main(int argc, char **argv)
{
	const char *ifname = NULL, *kind = "udp", *src_text = NULL, *dst_text = NULL;
	const char *smac_text = NULL, *dmac_text = NULL, *obj_path = NULL, *hold = NULL;
	unsigned long count = 0, sport = 40000, dport = 9, batch = 64, rate = 0, interval = 1000;
	unsigned long first = 0, threads = 0;
	int rand_source = 0, first_given = 0;
	uint8_t src[16], dst[16], smac[6], dmac[6], frame[128];
	char default_obj[PATH_MAX];
	int family, opt;

	while ((opt = getopt(argc, argv, "i:n:k:s:d:m:M:p:P:b:o:RS:r:I:T:A:h")) != -1) {
		switch (opt) {
		case 'i': ifname = optarg; break;
		case 'n': count = number(optarg, "count", ULONG_MAX); break;
		case 'k': kind = optarg; break;
		case 's': src_text = optarg; break;
		case 'd': dst_text = optarg; break;
		case 'm': smac_text = optarg; break;
		case 'M': dmac_text = optarg; break;
		case 'p': sport = number(optarg, "source port", 65535); break;
		case 'P': dport = number(optarg, "destination port", 65535); break;
		case 'b': batch = number(optarg, "batch size", 256); break;
		case 'o': obj_path = optarg; break;
		case 'R': rand_source = 1; break;
		case 'S': first = number(optarg, "first frame number", UINT32_MAX); first_given = 1; break;
		case 'r': rate = number(optarg, "rate", 100000000); break;
		case 'I': interval = number(optarg, "interval", 1000000); break;
		case 'A': hold = optarg; break;
		case 'T': threads = number(optarg, "threads", MAX_THREADS); break;
		default: usage();
		}
	}
	if (optind != argc || !ifname || !count || !src_text || !dst_text || !dmac_text || !batch ||
	    !interval)
		usage();
	if (!threads)
		threads = 1;
	if (strcmp(kind, "udp") && strcmp(kind, "syn"))
		die("kind must be udp or syn, not %s", kind);

	if (inet_pton(AF_INET, src_text, src) == 1 && inet_pton(AF_INET, dst_text, dst) == 1)
		family = AF_INET;
	else if (inet_pton(AF_INET6, src_text, src) == 1 && inet_pton(AF_INET6, dst_text, dst) == 1)
		family = AF_INET6;
	else
		die("source and destination must be both IPv4 or both IPv6: %s, %s", src_text,
		    dst_text);

	parse_mac(dmac_text, dmac);
	if (smac_text)
		parse_mac(smac_text, smac);
	unsigned int ifindex = if_nametoindex(ifname);
	if (!ifindex)
		die("no interface %s in this network namespace", ifname);
	if (!smac_text)
		mac_of(ifname, smac);
	size_t len = build(frame, family, !strcmp(kind, "syn"), src, dst, smac, dmac, sport, dport);

	if (!obj_path) {
		char exe[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

		if (n < 0)
			die("readlink /proc/self/exe: %s", strerror(errno));
		exe[n] = 0;
		snprintf(default_obj, sizeof(default_obj), "%s/redirect.bpf.o", dirname(exe));
		obj_path = default_obj;
	}

	libbpf_set_print(print_libbpf);
	struct bpf_object *obj = bpf_object__open_file(obj_path, NULL);
	if (!obj)
		die("cannot open %s: %s", obj_path, strerror(errno));
	// The program's settings live in its .rodata: `cfg`, its only variable.
	struct bpf_map *map, *rodata = NULL;
	bpf_object__for_each_map(map, obj) {
		const char *name = bpf_map__name(map);
		size_t n = strlen(name);
		if (bpf_map__is_internal(map) && n >= 7 && !strcmp(name + n - 7, ".rodata"))
			rodata = map;
	}
	if (!first_given) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		first = (uint32_t)(now.tv_sec * 1000003u + now.tv_nsec);
	}
	struct config {
		uint32_t ifindex, rand_source, first, kind;
	} cfg = { ifindex, rand_source, first, strcmp(kind, "syn") ? 17 : 6 };
	size_t rodata_size = 0;
	if (rodata)
		bpf_map__initial_value(rodata, &rodata_size);
	if (rodata_size != sizeof(cfg) || bpf_map__set_initial_value(rodata, &cfg, sizeof(cfg)))
		die("%s: expected .rodata holding only the 16-byte cfg", obj_path);
	if (bpf_object__load(obj))
		die("cannot load %s: %s", obj_path, strerror(errno));
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "xdpgen_redirect");
	if (!prog)
		die("%s has no program xdpgen_redirect", obj_path);
	int prog_fd = bpf_program__fd(prog);
	unsigned int hold_ifindex = 0;
	if (hold) {
		// See -A: attached (generic mode) for the run, the program stays in
		// the kernel's XDP dispatcher between calls.
		hold_ifindex = if_nametoindex(hold);
		if (!hold_ifindex)
			die("no interface %s in this network namespace", hold);
		int err = bpf_xdp_attach(hold_ifindex, prog_fd, XDP_FLAGS_SKB_MODE, NULL);
		if (err)
			die("cannot attach the program to %s (generic mode): %s", hold, strerror(-err));
	}

	struct timespec t1;
	pthread_t tids[MAX_THREADS];
	run.prog_fd = prog_fd;
	run.frame = frame;
	run.len = len;
	run.batch = batch;
	run.count = count;
	run.rate = rate;
	run.interval_ns = interval * 1000;
	run.threads = threads;
	clock_gettime(CLOCK_MONOTONIC, &run.t0);
	for (unsigned long i = 0; i < threads; i++) {
		int err = pthread_create(&tids[i], NULL, sender, (void *)i);
		if (err)
			die("pthread_create: %s", strerror(err));
	}
	for (unsigned long i = 0; i < threads; i++)
		pthread_join(tids[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double seconds = since(&run.t0, &t1);
	printf("frames=%lu len=%zu seconds=%.6f mpps=%.3f fps=%.0f runs=%lu largest=%lu busy=%.3f "
	       "threads=%lu first=%lu\n",
	       count, len, seconds, count / seconds / 1e6, count / seconds, run.runs, run.largest,
	       run.busy, threads, first);
	if (hold_ifindex)
		bpf_xdp_detach(hold_ifindex, XDP_FLAGS_SKB_MODE, NULL);
	bpf_object__close(obj);
	return 0;
}
