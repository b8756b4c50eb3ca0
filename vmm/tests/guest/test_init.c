/* Guest side of hull-vmm's lab tests: runs as /init of a throwaway initramfs, does the test
 * named by HULL_TEST (from the kernel command line), prints its findings on the console and
 * reboots (the VMM then exits). Built by the lab tests with `gcc -static`. */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int read_line(int fd, char *buf, int cap) {
    int n = 0;
    while (n < cap - 1) {
        char c;
        if (read(fd, &c, 1) != 1) break;
        buf[n++] = c;
        if (c == '\n') break;
    }
    buf[n] = 0;
    return n;
}

static int vsock_test(void) {
    /* Guest -> host: the host listens on <uds>_5000. */
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm host = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = 5000};
    if (s < 0 || connect(s, (struct sockaddr *)&host, sizeof host) != 0) {
        printf("GUEST_ERROR connect: %s\n", strerror(errno));
        return 1;
    }
    const char *msg = "ping from guest\n";
    if (write(s, msg, strlen(msg)) < 0) return 1;
    char buf[256];
    read_line(s, buf, sizeof buf);
    printf("GUEST_GOT %s", buf);
    close(s);

    /* Host -> guest: the host connects with CONNECT 1024. */
    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm any = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 1024};
    if (l < 0 || bind(l, (struct sockaddr *)&any, sizeof any) != 0 || listen(l, 1) != 0) {
        printf("GUEST_ERROR listen: %s\n", strerror(errno));
        return 1;
    }
    printf("GUEST_LISTENING\n");
    fflush(stdout);
    int c = accept(l, NULL, NULL);
    if (c < 0) {
        printf("GUEST_ERROR accept: %s\n", strerror(errno));
        return 1;
    }
    int n = read_line(c, buf, sizeof buf);
    printf("GUEST_READ %d\n", n);
    if (write(c, "echo: ", 6) < 0 || write(c, buf, n) < 0) {
        printf("GUEST_ERROR echo: %s\n", strerror(errno));
        return 1;
    }
    close(c);
    return 0;
}

static int blk_test(void) {
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY) {
        printf("GUEST_ERROR mount devtmpfs: %s\n", strerror(errno));
        return 1;
    }
    char buf[128] = {0};
    int a = open("/dev/vda", O_RDONLY);
    if (a < 0 || pread(a, buf, sizeof buf - 1, 0) <= 0) {
        printf("GUEST_ERROR read vda: %s\n", strerror(errno));
        return 1;
    }
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    printf("VDA %s\n", buf);
    int ro = open("/dev/vda", O_RDWR);
    int is_ro = 0;
    ioctl(a, BLKROGET, &is_ro);
    printf("VDA_RO %d\n", is_ro);
    /* Writing through the page cache may succeed; the flush to a read-only disk must fail. */
    int refused = ro < 0 || pwrite(ro, "x", 1, 0) != 1 || fsync(ro) != 0;
    printf("VDA_WRITE %s\n", refused ? "refused" : "accepted");
    int b = open("/dev/vdb", O_RDWR);
    const char *msg = "written by guest\n";
    if (b < 0 || pwrite(b, msg, strlen(msg), 512) != (ssize_t)strlen(msg) || fsync(b) != 0) {
        printf("GUEST_ERROR write vdb: %s\n", strerror(errno));
        return 1;
    }
    printf("VDB_WRITTEN\n");
    return 0;
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    int ok = fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text);
    if (fd >= 0) close(fd);
    return ok ? 0 : -1;
}

/* Mounts the share at /mnt and prints hello.txt as FS_READ. */
static int fs_mount_and_read(void) {
    if (mount("hullshare", "/mnt", "virtiofs", 0, NULL) != 0) {
        printf("GUEST_ERROR mount virtiofs hullshare: %s\n", strerror(errno));
        return 1;
    }
    printf("FS_MOUNTED\n");
    char buf[256] = {0};
    int in = open("/mnt/hello.txt", O_RDONLY);
    ssize_t n = in < 0 ? -1 : read(in, buf, sizeof buf - 1);
    if (n <= 0) {
        printf("GUEST_ERROR read /mnt/hello.txt: %s\n", strerror(errno));
        return 1;
    }
    close(in);
    printf("FS_READ %s", buf);
    return 0;
}

/* virtio-fs: mount the share, print a host file, write one back; then unbind and rebind the
 * driver (a device reset and a second start of virtiofsd's queues) and read again. */
static int fs_test(void) {
    mkdir("/mnt", 0755);
    if (fs_mount_and_read() != 0) return 1;
    const char *msg = "written by guest\n";
    int out = open("/mnt/from-guest.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || write(out, msg, strlen(msg)) != (ssize_t)strlen(msg) || fsync(out) != 0 ||
        close(out) != 0) {
        printf("GUEST_ERROR write /mnt/from-guest.txt: %s\n", strerror(errno));
        return 1;
    }
    printf("FS_WRITTEN\n");
    struct stat st;
    if (stat("/mnt/from-guest.txt", &st) != 0 || st.st_size != (off_t)strlen(msg)) {
        printf("GUEST_ERROR stat /mnt/from-guest.txt\n");
        return 1;
    }
    if (umount("/mnt") != 0) {
        printf("GUEST_ERROR umount: %s\n", strerror(errno));
        return 1;
    }
    printf("FS_UNMOUNTED\n");

    mkdir("/sys", 0755);
    if (mount("sysfs", "/sys", "sysfs", 0, NULL) != 0 && errno != EBUSY) {
        printf("GUEST_ERROR mount sysfs: %s\n", strerror(errno));
        return 1;
    }
    const char *drv = "/sys/bus/virtio/drivers/virtiofs";
    char dev[256] = {0};
    DIR *d = opendir(drv);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strncmp(e->d_name, "virtio", 6) == 0) snprintf(dev, sizeof dev, "%s", e->d_name);
    }
    if (d) closedir(d);
    char path[320];
    snprintf(path, sizeof path, "%s/unbind", drv);
    if (!dev[0] || write_file(path, dev) != 0) {
        printf("GUEST_ERROR unbind virtiofs device '%s': %s\n", dev, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/bind", drv);
    if (write_file(path, dev) != 0) {
        printf("GUEST_ERROR rebind virtiofs device '%s': %s\n", dev, strerror(errno));
        return 1;
    }
    printf("FS_REBOUND %s\n", dev);
    return fs_mount_and_read();
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static int vsock_dial(unsigned cid, unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    if (s < 0) return -errno;
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(s);
        return -e;
    }
    return s;
}

#define FLOOD 400
#define ZERO_CREDIT 8

/* A hostile guest against hull-vmm's vsock and queues: a connection flood, dials to CID 1 and
 * its own CID, zero-credit connections whose host side hangs up, then a storm on the vsock
 * and block queues from both vCPUs. Ends idle (the host measures, then sends SIGTERM). */
static int hostile_test(void) {
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    static int fds[FLOOD];
    int ok = 0, refused = 0;
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = vsock_dial(VMADDR_CID_HOST, 5001);
        if (fds[i] >= 0) ok++;
        else refused++;
    }
    printf("FLOOD ok=%d refused=%d\n", ok, refused);
    fflush(stdout);
    /* The host never reads these: fill the device's buffers (and the host sockets) on many
     * connections at once, for at most 60 s. */
    static char chunk[65536];
    long sent = 0, fill_end = now_ms() + 60000;
    for (int i = 0, filled = 0; i < FLOOD && filled < 48 && now_ms() < fill_end; i++) {
        if (fds[i] < 0) continue;
        filled++;
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        for (long mine = 0; mine < 512 * 1024 && now_ms() < fill_end;) {
            ssize_t n = write(fds[i], chunk, sizeof chunk);
            if (n > 0) {
                mine += n;
                sent += n;
            } else if (errno == EAGAIN) {
                usleep(200000);
                if (write(fds[i], chunk, 1) != 1) break;
                sent++;
            } else {
                break;
            }
        }
    }
    printf("FILL sent=%ld\n", sent);
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0) close(fds[i]);

    unsigned cids[2] = {VMADDR_CID_LOCAL, 0};
    int dev = open("/dev/vsock", O_RDONLY);
    if (dev < 0 || ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cids[1]) != 0)
        printf("GUEST_ERROR local CID: %s\n", strerror(errno));
    if (dev >= 0) close(dev);
    for (int i = 0; i < 2; i++) {
        long t0 = now_ms();
        int s = vsock_dial(cids[i], 1024);
        printf("DIAL cid=%u result=%d ms=%ld\n", cids[i], s < 0 ? s : 0, now_ms() - t0);
        if (s >= 0) close(s);
    }

    /* The host writes to these and hangs up; the guest never reads. Half are closed by the
     * guest with data unread, half stay open (the device must give up on them by itself). */
    int zc[ZERO_CREDIT];
    for (int i = 0; i < ZERO_CREDIT; i++) zc[i] = vsock_dial(VMADDR_CID_HOST, 5002);
    sleep(3);
    for (int i = 0; i < ZERO_CREDIT / 2; i++)
        if (zc[i] >= 0) close(zc[i]);
    printf("ZERO_CREDIT opened\nSTORM_START\n");
    fflush(stdout);

    long storm_ms = 15000, end = now_ms() + storm_ms;
    pid_t child = fork();
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(child == 0 ? 1 : 0, &set);
    sched_setaffinity(0, sizeof set, &set);
    int v = vsock_dial(VMADDR_CID_HOST, 5003);
    int d = open("/dev/vda", O_RDONLY | O_DIRECT);
    static char buf[4096] __attribute__((aligned(4096)));
    long writes = 0, reads = 0;
    while (now_ms() < end) {
        if (v >= 0 && write(v, "x", 1) == 1) writes++;
        if (d >= 0 && pread(d, buf, 512, (reads % 64) * 512) == 512) reads++;
    }
    printf("STORM cpu=%d vsock_writes=%ld blk_reads=%ld\n", child == 0 ? 1 : 0, writes, reads);
    fflush(stdout);
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
    if (v >= 0) close(v);
    printf("STORM_DONE\n");
    fflush(stdout);
    for (;;) pause();
}

#include "net_tests.c"

int main(void) {
    const char *test = getenv("HULL_TEST");
    int rc = 1;
    if (test && strcmp(test, "vsock") == 0) rc = vsock_test();
    else if (test && strcmp(test, "blk") == 0) rc = blk_test();
    else if (test && strcmp(test, "fs") == 0) rc = fs_test();
    else if (test && strcmp(test, "hostile") == 0) rc = hostile_test();
    else if (test && strcmp(test, "net") == 0) rc = net_test();
    else if (test && strcmp(test, "net_hostile") == 0) rc = net_hostile_test();
    else printf("GUEST_ERROR unknown HULL_TEST\n");
    printf("HULL_TEST_DONE %d\n", rc);
    fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    return rc;
}
