/* Guest side of hull-vmm's virtio-net lab tests, included by test_init.c: brings eth0 up by
 * ioctl (no busybox in the test initramfs), then talks TCP with the network namespace the lab
 * test created around the tap (10.77.0.1 / fd77::1; the guest is 10.77.0.2 / fd77::2), or
 * plays the hostile guest: stops taking RX while the host floods it, then floods TX. */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#define NET_BULK (16 << 20)

struct hull_in6_ifreq {
    struct in6_addr addr;
    unsigned int prefixlen;
    int ifindex;
};

static int set_flags(const char *name, int up) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (up) ifr.ifr_flags |= IFF_UP;
    else ifr.ifr_flags &= ~IFF_UP;
    if (rc == 0) rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    if (rc != 0) printf("GUEST_ERROR %s %s: %s\n", name, up ? "up" : "down", strerror(errno));
    close(s);
    return rc;
}

/* eth0 up with 10.77.0.2/24 (and fd77::2/64 without duplicate address detection). */
static int eth0_up(int ipv6) {
    mkdir("/proc", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    if (set_flags("lo", 1) != 0) return 1;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, "10.77.0.2", &a->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) != 0) {
        printf("GUEST_ERROR eth0 address: %s\n", strerror(errno));
        return 1;
    }
    inet_pton(AF_INET, "255.255.255.0", &a->sin_addr);
    ioctl(s, SIOCSIFNETMASK, &ifr);
    if (ipv6) write_file("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0");
    if (set_flags("eth0", 1) != 0) return 1;
    if (ipv6) {
        int s6 = socket(AF_INET6, SOCK_DGRAM, 0);
        struct hull_in6_ifreq r = {.prefixlen = 64};
        ioctl(s, SIOCGIFINDEX, &ifr);
        r.ifindex = ifr.ifr_ifindex;
        inet_pton(AF_INET6, "fd77::2", &r.addr);
        if (s6 < 0 || ioctl(s6, SIOCSIFADDR, &r) != 0) {
            printf("GUEST_ERROR eth0 ipv6 address: %s\n", strerror(errno));
            return 1;
        }
        close(s6);
    }
    ioctl(s, SIOCGIFMTU, &ifr);
    int mtu = ifr.ifr_mtu;
    ioctl(s, SIOCGIFHWADDR, &ifr);
    unsigned char *m = (unsigned char *)ifr.ifr_hwaddr.sa_data;
    printf("NET_UP mtu=%d mac=%02x:%02x:%02x:%02x:%02x:%02x\n", mtu, m[0], m[1], m[2], m[3], m[4],
           m[5]);
    fflush(stdout);
    close(s);
    return 0;
}

/* TCP connection to 10.77.0.1:port, retried for up to 60 s (the host side may start late). */
static int tcp_dial(int port) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "10.77.0.1", &to.sin_addr);
    long end = now_ms() + 60000;
    while (now_ms() < end) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&to, sizeof to) == 0) return s;
        close(s);
        usleep(200000);
    }
    printf("GUEST_ERROR connect 10.77.0.1:%d: %s\n", port, strerror(errno));
    return -1;
}

static int tcp_listen(int port) {
    int l = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    if (bind(l, (struct sockaddr *)&any, sizeof any) != 0 || listen(l, 4) != 0) {
        printf("GUEST_ERROR listen %d: %s\n", port, strerror(errno));
        return -1;
    }
    return l;
}

/* Echoes one connection until the peer closes it. */
static void echo_until_eof(int l) {
    int c = accept(l, NULL, NULL);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buf[4096];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0)
        if (write(c, buf, n) != n) break;
    close(c);
}

static int net_test(void) {
    if (eth0_up(1) != 0) return 1;
    /* Guest -> netns. */
    int s = tcp_dial(7000);
    if (s < 0) return 1;
    char buf[65536];
    if (write(s, "ping from guest\n", 16) != 16) return 1;
    read_line(s, buf, 256);
    printf("NET_GOT %s", buf);
    close(s);
    /* Netns -> guest, over IPv4 then IPv6: echoes (the host also times round trips). */
    int l = tcp_listen(7001);
    if (l < 0) return 1;
    printf("NET_LISTENING\n");
    fflush(stdout);
    echo_until_eof(l);
    echo_until_eof(l);
    /* Bulk netns -> guest: count until EOF, report the count. */
    int l2 = tcp_listen(7002);
    if (l2 < 0) return 1;
    int c = accept(l2, NULL, NULL);
    long got = 0;
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) got += n;
    int len = snprintf(buf, 64, "got %ld\n", got);
    if (write(c, buf, len) != len) return 1;
    close(c);
    /* Bulk guest -> netns. */
    s = tcp_dial(7003);
    if (s < 0) return 1;
    memset(buf, 0x42, sizeof buf);
    long sent = 0;
    while (sent < NET_BULK && (n = write(s, buf, sizeof buf)) > 0) sent += n;
    /* The host's count confirms delivery (a reboot right after close would cut the tail). */
    shutdown(s, SHUT_WR);
    read_line(s, buf, 64);
    close(s);
    printf("NET_BULK rx=%ld tx=%ld netns_%s", got, sent, buf);
    return sent == NET_BULK ? 0 : 1;
}

/* Waits for the host's go-ahead: a connection to vsock port 1025. */
static void wait_host(int l) {
    int c = accept(l, NULL, NULL);
    close(c);
}

static int net_hostile_test(void) {
    if (eth0_up(0) != 0) return 1;
    int ctl = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm any = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 1025};
    if (bind(ctl, (struct sockaddr *)&any, sizeof any) != 0 || listen(ctl, 4) != 0) return 1;
    /* The vsock echo the host checks during the floods. */
    if (fork() == 0) {
        int l = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 1024};
        bind(l, (struct sockaddr *)&a, sizeof a);
        listen(l, 8);
        for (;;) {
            int c = accept(l, NULL, NULL);
            char line[256];
            int n = read_line(c, line, sizeof line);
            if (write(c, "echo: ", 6) == 6 && write(c, line, n) == n) {}
            close(c);
        }
    }
    /* RX stall: with eth0 down the driver stops taking used buffers back. */
    if (set_flags("eth0", 0) != 0) return 1;
    printf("NET_RX_STALLED\n");
    fflush(stdout);
    wait_host(ctl);
    if (set_flags("eth0", 1) != 0) return 1;
    int s = tcp_dial(7000);
    if (s < 0) return 1;
    char buf[1400];
    if (write(s, "alive after the stall\n", 22) != 22) return 1;
    read_line(s, buf, 256);
    printf("NET_RECOVERED %s", buf);
    close(s);
    /* TX flood until the host says stop. */
    pid_t flood = fork();
    if (flood == 0) {
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9999)};
        inet_pton(AF_INET, "10.77.0.1", &to.sin_addr);
        memset(buf, 0x77, sizeof buf);
        for (;;) sendto(u, buf, sizeof buf, 0, (struct sockaddr *)&to, sizeof to);
    }
    printf("NET_TX_FLOOD\n");
    fflush(stdout);
    wait_host(ctl);
    kill(flood, SIGKILL);
    waitpid(flood, NULL, 0);
    printf("NET_HOSTILE_DONE\n");
    return 0;
}
