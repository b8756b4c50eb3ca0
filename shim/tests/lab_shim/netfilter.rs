//! The guest kernel's netfilter is enough for a service-mesh init container (issue 12): a
//! privileged Hull container installs a nat `OUTPUT` REDIRECT rule with Debian's
//! `iptables-legacy` and with `iptables-nft` (image: tests/images/iptables.sh) and a
//! connection to the redirected port reaches a local server; without `--privileged` both
//! are refused (no CAP_NET_ADMIN in the guest).
//!
//! Two container starts in all: one privileged run does both flavours in one script, one
//! unprivileged run checks the refusal.

use super::*;

/// The name `tests/images/iptables.sh`'s tarball is imported under.
const IPTABLES_IMAGE: &str = "docker.io/library/hull-iptables:latest";
/// What the server in the guest answers.
const ANSWER: &str = "hull-redirect-answer";

/// Runs in the guest: an HTTP server on 127.0.0.1:8080, then per flavour a fetch from the
/// flavour's port (nothing listens there), the REDIRECT rule to 8080, the fetch again, and a
/// `FLAVOUR` line with what happened; the rules are flushed before the next flavour.
/// busybox `wget -T` crashes (1.35, static): `timeout` bounds the fetches instead.
const PROBE: &str = r#"
echo "KERNEL $(uname -r)"
echo "CAPS $(grep CapEff /proc/self/status)"
ip link set lo up 2>/dev/null
mkdir -p /tmp/www && echo hull-redirect-answer > /tmp/www/index.html
httpd -f -p 127.0.0.1:8080 -h /tmp/www &
server=$!
i=0
until timeout 10 wget -q -O /dev/null http://127.0.0.1:8080/ 2>/dev/null; do
    i=$((i + 1)); [ $i -ge 100 ] && { echo "SERVER not answering"; break; }; sleep 0.2
done
fetch() { timeout 10 wget -q -O - "http://127.0.0.1:$1/" 2>&1 | head -c 200 | tr '\n' ' '; }
for f in legacy:8081 nft:8082; do
    flavour=${f%:*} port=${f#*:}
    before=$(fetch "$port")
    add=$(iptables-$flavour -w -t nat -A OUTPUT -p tcp --dport "$port" -j REDIRECT --to-ports 8080 2>&1)
    rc=$?
    rules=$(iptables-$flavour -w -t nat -S OUTPUT 2>&1 | tr '\n' ';')
    after=$(fetch "$port")
    echo "FLAVOUR $flavour port=[$port] add_rc=[$rc] add_err=[$(echo "$add" | tr '\n' ' ')] rules=[$rules] before=[$before] after=[$after]"
    iptables-$flavour -w -t nat -F OUTPUT 2>/dev/null
done
kill $server
"#;

/// Runs in the unprivileged container: both flavours try to add the rule.
const REFUSED: &str = r#"
echo "CAPS $(grep CapEff /proc/self/status)"
for flavour in legacy nft; do
    add=$(iptables-$flavour -w -t nat -A OUTPUT -p tcp --dport 8083 -j REDIRECT --to-ports 8080 2>&1)
    echo "FLAVOUR $flavour add_rc=[$?] add_err=[$(echo "$add" | tr '\n' ' ')]"
done
"#;

/// The text inside `key=[...]` of a report line.
fn bracketed<'a>(line: &'a str, key: &str) -> &'a str {
    let start = format!("{key}=[");
    line.find(&start)
        .map(|i| &line[i + start.len()..])
        .and_then(|rest| rest.find(']').map(|end| &rest[..end]))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// Whether the `CAPS CapEff: <hex>` line of a report has CAP_NET_ADMIN (bit 12).
fn net_admin(report: &str) -> bool {
    let hex = report
        .lines()
        .find_map(|l| l.strip_prefix("CAPS CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in:\n{report}"));
    let caps = u64::from_str_radix(hex.trim(), 16).expect("CapEff is hex");
    caps & (1 << 12) != 0
}

/// The `FLAVOUR <flavour>` line of a report.
fn flavour_line<'a>(report: &'a str, flavour: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("FLAVOUR {flavour} ")))
        .unwrap_or_else(|| panic!("no report for {flavour}:\n{report}"))
}

/// `ctr run --rm` of the iptables image under Hull; prints and returns its output.
fn run_iptables(ctrd: &Containerd, id: &str, opts: &[&str], script: &str) -> String {
    let started = Instant::now();
    let mut args = vec!["run", "--rm", "--runtime", HULL];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[IPTABLES_IMAGE, id, "sh", "-c", script]);
    let out = ctrd.ctr(&args);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!(
        "ctr run {opts:?} {id}: {} in {:.1} s\n{said}",
        out.status,
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "ctr run {id}: {said}\nshim log:\n{}",
        ctrd.shim_log()
    );
    text(&out.stdout)
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_iptables_legacy_and_nft_redirect_in_the_guest_privileged_only() {
    let release = guest_release();
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["nf-priv", "nf-unpriv"]);
    let tar = script_output("tests/images/iptables.sh", &[]);
    ctrd.ctr_ok(&[
        "images",
        "import",
        "--base-name",
        "docker.io/library/hull-iptables",
        &tar,
    ]);

    let report = run_iptables(ctrd, "nf-priv", &["--privileged"], PROBE);
    assert!(
        report.contains(&format!("KERNEL {release}")),
        "the script ran on the Hull guest kernel {release}:\n{report}"
    );
    assert!(!report.contains("SERVER not answering"), "{report}");
    let mut works = Vec::new();
    for flavour in ["legacy", "nft"] {
        let line = flavour_line(&report, flavour);
        let port = bracketed(line, "port");
        assert_eq!(bracketed(line, "add_rc"), "0", "iptables-{flavour}: {line}");
        assert!(
            bracketed(line, "rules")
                .contains(&format!("--dport {port} -j REDIRECT --to-ports 8080")),
            "iptables-{flavour} lists its rule: {line}"
        );
        assert!(
            !bracketed(line, "before").contains(ANSWER),
            "port {port} answers before the rule: {line}"
        );
        assert!(
            bracketed(line, "after").contains(ANSWER),
            "iptables-{flavour}: port {port} is not redirected to the server: {line}"
        );
        works.push(format!("iptables-{flavour} (port {port} -> 8080)"));
    }

    assert!(net_admin(&report), "privileged: CAP_NET_ADMIN\n{report}");

    let refused = run_iptables(ctrd, "nf-unpriv", &[], REFUSED);
    assert!(
        !net_admin(&refused),
        "unprivileged: no CAP_NET_ADMIN\n{refused}"
    );
    for flavour in ["legacy", "nft"] {
        let line = flavour_line(&refused, flavour);
        assert_ne!(
            bracketed(line, "add_rc"),
            "0",
            "iptables-{flavour} added a rule without --privileged: {line}"
        );
        // The kernel's CAP_NET_ADMIN checks answer EPERM: legacy sees it from getsockopt on
        // its raw socket (the default capabilities keep CAP_NET_RAW), nft from netlink.
        let err = bracketed(line, "add_err");
        assert!(
            err.contains("Operation not permitted") || err.contains("Permission denied"),
            "iptables-{flavour} is refused with EPERM: {line}"
        );
        assert!(!err.contains("lock file"), "{line}");
    }
    println!(
        "NETFILTER guest {release}: nat OUTPUT REDIRECT works with {}; \
         refused without --privileged (no CAP_NET_ADMIN)",
        works.join(" and ")
    );
    assert_clean(ctrd, "the iptables runs");
}
