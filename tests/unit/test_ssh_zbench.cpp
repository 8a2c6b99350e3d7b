// Hidden throughput probes ([.bench]); run by hand: ephrun_tests '[.bench]'.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "../support/sshd_fixture.hpp"
#include "ssh/keys.hpp"
#include "ssh/session.hpp"
#include "ssh/session_impl.hpp"
#include "ssh/sync.hpp"

using namespace ephrun;
using test::sh;

namespace {
double secs(ssh::Clock::time_point t0) {
  return std::chrono::duration<double>(ssh::Clock::now() - t0).count();
}
}  // namespace

TEST_CASE("ssh bench: raw throughput vs OpenSSH", "[.bench]") {
  test::Sshd d;
  auto k = ssh::generate_ed25519("bench");
  d.authorize(k.public_line);
  ssh::write_key_files(k, d.dir() + "/id");
  ssh::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = d.port();
  o.user = d.user();
  o.private_key = k.private_pem;
  o.host_key = d.host_key_pub();
  auto s = ssh::Session::connect(o);
  std::string sshcmd = "ssh -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -i " +
                       d.dir() + "/id -p " + std::to_string(d.port()) + " ephrun-test@127.0.0.1";
  long mb = 500;
  // ours: 500 MB into cat > /dev/null
  std::string chunk(1 << 20, 'x');
  long sent = 0;
  ssh::StreamIO io;
  io.produce = [&](std::string& b) {
    if (sent >= mb) return false;
    b = chunk;
    ++sent;
    return true;
  };
  auto t0 = ssh::Clock::now();
  s.impl().exec_stream("cat > /dev/null", {}, {}, io, ssh::Clock::time_point::max(), {}, true);
  double ours = secs(t0);
  t0 = ssh::Clock::now();
  sh("head -c " + std::to_string(mb) + "M /dev/zero | " + sshcmd + " 'cat > /dev/null'");
  double theirs = secs(t0);
  std::cout << "cat>/dev/null " << mb << " MB: ephrun " << mb / ours << " MB/s, ssh " << mb / theirs
            << " MB/s\n";
}

namespace {
// 5,000 files / ~200 MB of mixed sizes in 50 directories, deterministic content.
void make_tree(const std::string& root) {
  std::uint64_t x = 88172645463325252ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  std::string buf;
  for (int i = 0; i < 5000; ++i) {
    std::string dir = root + "/d" + std::to_string(i / 100) + (i % 3 == 0 ? "/sub" : "");
    std::filesystem::create_directories(dir);
    std::size_t size = (i % 100 == 0) ? (2u << 20) : (1000 + (next() % 39000));
    buf.resize((size + 7) / 8 * 8);
    for (std::size_t j = 0; j < buf.size(); j += 8) {
      auto v = next();
      std::memcpy(&buf[j], &v, 8);
    }
    buf.resize(size);
    test::write_text(dir + "/f" + std::to_string(i) + ".dat", buf);
  }
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

TEST_CASE("ssh bench: sync of 5000 files / 200 MB vs tar|ssh and rsync", "[.bench]") {
  test::Sshd d;
  auto k = ssh::generate_ed25519("bench");
  d.authorize(k.public_line);
  ssh::write_key_files(k, d.dir() + "/id");
  ssh::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = d.port();
  o.user = d.user();
  o.private_key = k.private_pem;
  o.host_key = d.host_key_pub();
  auto s = ssh::Session::connect(o);
  std::string ssh_e = "ssh -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -i " +
                      d.dir() + "/id -p " + std::to_string(d.port());
  std::string sshcmd = ssh_e + " ephrun-test@127.0.0.1";
  std::string src = d.dir() + "/tree";
  make_tree(src);
  std::string rbase = d.home() + "/bench-" + std::to_string(d.port());
  int runs = std::getenv("EPHRUN_BENCH_RUNS") ? std::atoi(std::getenv("EPHRUN_BENCH_RUNS")) : 3;
  std::vector<double> ours, tarssh, rsync, ours_warm, rsync_warm, ours_one, rsync_one;
  for (int r = 0; r < runs; ++r) {
    sh("rm -rf " + rbase + "; mkdir -p " + rbase + " && chown ephrun-test " + rbase);
    auto t0 = ssh::Clock::now();
    sh("tar -C " + src + " -cf - . | " + sshcmd + " 'mkdir -p " + rbase + "/tar && tar -x -C " +
       rbase + "/tar -f -'");
    tarssh.push_back(secs(t0));
    t0 = ssh::Clock::now();
    sh("rsync -a -e '" + ssh_e + "' " + src + "/ ephrun-test@127.0.0.1:" + rbase + "/rsync/");
    rsync.push_back(secs(t0));
    t0 = ssh::Clock::now();
    // Ours includes connecting, as the OpenSSH-based peers do.
    auto st = ssh::sync(s = ssh::Session::connect(o), src, rbase + "/ours");
    ours.push_back(secs(t0));
    REQUIRE(st.files_sent == 5000);
    t0 = ssh::Clock::now();
    st = ssh::sync(s = ssh::Session::connect(o), src, rbase + "/ours");
    ours_warm.push_back(secs(t0));
    REQUIRE(st.files_sent == 0);
    t0 = ssh::Clock::now();
    sh("rsync -a -e '" + ssh_e + "' " + src + "/ ephrun-test@127.0.0.1:" + rbase + "/rsync/");
    rsync_warm.push_back(secs(t0));
    sh("echo change-" + std::to_string(r) + " >> " + src + "/d7/f701.dat");
    t0 = ssh::Clock::now();
    st = ssh::sync(s = ssh::Session::connect(o), src, rbase + "/ours");
    ours_one.push_back(secs(t0));
    REQUIRE(st.files_sent == 1);
    t0 = ssh::Clock::now();
    sh("rsync -a -e '" + ssh_e + "' " + src + "/ ephrun-test@127.0.0.1:" + rbase + "/rsync/");
    rsync_one.push_back(secs(t0));
  }
  sh("rm -rf " + rbase);
  std::cout << "cold: ephrun " << median(ours) << " s, tar|ssh " << median(tarssh) << " s, rsync "
            << median(rsync) << " s; ratio to tar|ssh " << median(ours) / median(tarssh) << "\n"
            << "warm no change: ephrun " << median(ours_warm) << " s, rsync " << median(rsync_warm)
            << " s\n"
            << "warm one change: ephrun " << median(ours_one) << " s, rsync " << median(rsync_one)
            << " s\n";
}

TEST_CASE("ssh bench: connect + first command latency vs ssh host true", "[.bench]") {
  test::Sshd d;
  auto k = ssh::generate_ed25519("bench");
  d.authorize(k.public_line);
  ssh::write_key_files(k, d.dir() + "/id");
  ssh::ConnectOptions o;
  o.host = "127.0.0.1";
  o.port = d.port();
  o.user = d.user();
  o.private_key = k.private_pem;
  o.host_key = d.host_key_pub();
  std::string sshcmd = "ssh -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -i " +
                       d.dir() + "/id -p " + std::to_string(d.port()) + " ephrun-test@127.0.0.1";
  std::vector<double> ours, theirs;
  for (int i = 0; i < 7; ++i) {
    auto t0 = ssh::Clock::now();
    auto s = ssh::Session::connect(o);
    REQUIRE(s.run("true").code == 0);
    ours.push_back(secs(t0));
    t0 = ssh::Clock::now();
    sh(sshcmd + " true");
    theirs.push_back(secs(t0));
  }
  std::cout << "connect + `true`: ephrun " << median(ours) * 1000 << " ms, ssh "
            << median(theirs) * 1000 << " ms\n";
}
