// SPDX-License-Identifier: GPL-2.0
// xdpgen: sends COUNT copies of one frame out of a veth end (or any device
// with ndo_xdp_xmit) as XDP frames, without an skb, the way a NIC with a
// native XDP driver delivers packets to its peer.
//
// How: redirect.bpf.o (bpf_redirect(ifindex, 0)) is run with BPF_PROG_RUN
// and BPF_F_TEST_XDP_LIVE_FRAMES (kernel >= 5.18): the kernel runs it on
// COUNT frames built from the one given, in batches, and really redirects
// them. A veth peer receives them through its XDP path, so it must have an
// XDP program attached in native (driver) mode.
//
// Run it in the network namespace that holds the sending interface (the
// redirect resolves the ifindex there). Loading needs no bpffs.
//
// Usage: xdpgen -i IF -n COUNT -s SRC -d DST -M DST_MAC [-k udp|syn]
//               [-m SRC_MAC] [-p SPORT] [-P DPORT] [-b BATCH] [-o redirect.bpf.o]
// SRC and DST are both IPv4 or both IPv6. Prints one line on stdout:
//   frames=N len=BYTES seconds=WALL mpps=RATE
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
#include <net/if.h>
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
		"              [-m SRC_MAC] [-p SPORT] [-P DPORT] [-b BATCH] [-o OBJ]\n"
		"  -i IF       the interface to send out of (run in its namespace)\n"
		"  -n COUNT    frames to send\n"
		"  -k KIND     udp (default) or syn (TCP SYN)\n"
		"  -s, -d      source and destination address (both IPv4 or both IPv6)\n"
		"  -m, -M      source MAC (default: IF's) and destination MAC\n"
		"  -p, -P      source and destination port (default 40000, 9)\n"
		"  -b BATCH    frames per batch (default 64, at most 256)\n"
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

int main(int argc, char **argv)
{
	const char *ifname = NULL, *kind = "udp", *src_text = NULL, *dst_text = NULL;
	const char *smac_text = NULL, *dmac_text = NULL, *obj_path = NULL;
	unsigned long count = 0, sport = 40000, dport = 9, batch = 64;
	uint8_t src[16], dst[16], smac[6], dmac[6], frame[128];
	char default_obj[PATH_MAX];
	int family, opt;

	while ((opt = getopt(argc, argv, "i:n:k:s:d:m:M:p:P:b:o:h")) != -1) {
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
		default: usage();
		}
	}
	if (optind != argc || !ifname || !count || !src_text || !dst_text || !dmac_text || !batch)
		usage();
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
	// The ifindex the program redirects to lives in its .rodata.
	struct bpf_map *map, *rodata = NULL;
	bpf_object__for_each_map(map, obj) {
		const char *name = bpf_map__name(map);
		size_t n = strlen(name);
		if (bpf_map__is_internal(map) && n >= 7 && !strcmp(name + n - 7, ".rodata"))
			rodata = map;
	}
	// Its only variable: a size of exactly 4 bytes says it is at offset 0.
	size_t rodata_size = 0;
	uint32_t value = ifindex;
	if (rodata)
		bpf_map__initial_value(rodata, &rodata_size);
	if (rodata_size != sizeof(value) || bpf_map__set_initial_value(rodata, &value, sizeof(value)))
		die("%s: expected .rodata holding only the u32 ifindex", obj_path);
	if (bpf_object__load(obj))
		die("cannot load %s: %s", obj_path, strerror(errno));
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "xdpgen_redirect");
	if (!prog)
		die("%s has no program xdpgen_redirect", obj_path);
	int prog_fd = bpf_program__fd(prog);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned long left = count; left;) {
		// repeat is an int: very large counts go in several runs.
		unsigned long chunk = left > (1UL << 30) ? 1UL << 30 : left;
		LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
			    .repeat = chunk, .flags = BPF_F_TEST_XDP_LIVE_FRAMES,
			    .batch_size = batch);
		if (bpf_prog_test_run_opts(prog_fd, &opts))
			die("BPF_PROG_RUN (live frames) failed after %lu frames: %s",
			    count - left, strerror(errno));
		left -= chunk;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double seconds = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("frames=%lu len=%zu seconds=%.6f mpps=%.3f\n", count, len, seconds,
	       count / seconds / 1e6);
	bpf_object__close(obj);
	return 0;
}
