"""The supervisor's and the guardian's decisions on their own: listener tables, model cards, the comeback of an
external server, the guardian's protocol; and, with real sockets and processes, the port and tree checks."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys

from hallurun.server.guardian import SERVER_ID_ENV, Server, read_protocol, signal_trees, tree_pids
from hallurun.server.supervisor import Comeback, host_addresses, listening_inodes, max_model_len, port_in_use

LOOPBACK = {ipaddress.ip_address("127.0.0.1")}

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0 100 0 0 10 0
   3: 0500000A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0 100 0 0 10 0
"""
# [::]:8080 listening, and ::ffff:127.0.0.1:8081 listening.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 555 1 0
   1: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 666 1 0
"""  # noqa: E501


def test_only_listeners_a_connection_to_the_host_could_reach_count() -> None:
    # 127.0.0.1:8080 listens; the connected socket on the same port and 10.0.0.5:8080 do not matter.
    assert listening_inodes(TCP, 8080, LOOPBACK) == {111}
    assert listening_inodes(TCP, 8081, LOOPBACK) == {222}  # 0.0.0.0 takes loopback connections too
    assert listening_inodes(TCP, 8082, LOOPBACK) == set()


def test_ipv6_wildcards_and_mapped_ipv4_listeners_count() -> None:
    assert listening_inodes(TCP6, 8080, LOOPBACK) == {555}
    assert listening_inodes(TCP6, 8081, LOOPBACK) == {666}


def test_a_wildcard_host_is_reached_by_every_listener_on_the_port() -> None:
    assert listening_inodes(TCP, 8080, {ipaddress.ip_address("0.0.0.0")}) == {111, 444}


def test_host_addresses_resolve_names() -> None:
    assert ipaddress.ip_address("127.0.0.1") in host_addresses("localhost")
    assert host_addresses("127.0.0.1") == LOOPBACK


def test_max_model_len_comes_from_the_models_card() -> None:
    cards = {"data": [{"id": "a", "max_model_len": 2048}, {"id": "b", "max_model_len": 4096}]}
    assert max_model_len(cards, "b") == 4096
    assert max_model_len(cards, "c") is None  # several cards, none of this model: nothing to go on
    assert max_model_len({"data": [{"id": "served", "max_model_len": 512}]}, "other") == 512
    assert max_model_len({"data": [{"id": "m", "max_model_len": None}]}, "m") is None
    assert max_model_len({"data": [{"id": "m", "max_model_len": True}]}, "m") is None
    assert max_model_len({"error": "nope"}, "m") is None
    assert max_model_len([], "m") is None


def test_after_a_restart_request_a_healthy_answer_counts_only_once_the_old_server_was_seen_gone() -> None:
    comeback = Comeback()
    assert [comeback.ready(h) for h in (True, True, False, False, True)] == [False, False, False, False, True]
    assert Comeback(seen_gone=True).ready(True)


def test_the_guardian_protocol_keeps_servers_until_released() -> None:
    servers = read_protocol(["?aaa\n", "+10 aaa\n", "?bbb\n", "+20 bbb\n", "-10\n", "\n", "?ccc\n"])
    assert servers == {"bbb": Server(20, "bbb"), "ccc": Server(0, "ccc")}  # ccc: announced, killed before its fork
    assert Server(20, "bbb").marker == f"{SERVER_ID_ENV}=bbb".encode()


def test_port_in_use_sees_a_listener_and_not_a_closed_one() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.listen()
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_a_tree_is_its_session_and_every_process_with_its_token() -> None:
    lingering = "import signal; signal.pause()"
    leader = subprocess.Popen([sys.executable, "-c", lingering], start_new_session=True)
    token = f"test-{os.getpid()}"
    # A helper in a session of its own, carrying the launch's token, as a daemonizing child of the server would.
    helper = subprocess.Popen([sys.executable, "-c", lingering], start_new_session=True,
                              env={**os.environ, SERVER_ID_ENV: token})
    other = subprocess.Popen([sys.executable, "-c", lingering], start_new_session=True,
                             env={**os.environ, SERVER_ID_ENV: token + "-other"})
    try:
        server = Server(leader.pid, token)
        assert tree_pids([server]) == {leader.pid, helper.pid}
        # The group's KILL goes first: the leader may already be a zombie (not listed) when the tree is read.
        assert {helper.pid} <= signal_trees([server], signal.SIGKILL) <= {leader.pid, helper.pid}
        assert leader.wait(10) == -signal.SIGKILL and helper.wait(10) == -signal.SIGKILL
        assert other.poll() is None
        assert tree_pids([server]) == set()
    finally:
        for proc in (leader, helper, other):
            proc.kill()
            proc.wait()


def test_a_launch_announced_but_never_watched_is_still_reaped_by_the_guardian() -> None:
    # hallurun killed between a launch's fork and its `watch`: the guardian only heard `?TOKEN`, and the server
    # (here a process carrying the token in a session of its own) must still go when the guardian's pipe closes.
    token = f"announced-{os.getpid()}"
    server = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True,
                              env={**os.environ, SERVER_ID_ENV: token})
    guardian = subprocess.Popen([sys.executable, "-m", "hallurun.server.guardian"], stdin=subprocess.PIPE,
                                start_new_session=True)
    try:
        assert guardian.stdin is not None
        guardian.stdin.write(f"?{token}\n".encode())
        guardian.stdin.close()  # as when hallurun dies
        assert server.wait(30) == -signal.SIGTERM
        assert guardian.wait(30) == 0
    finally:
        for proc in (server, guardian):
            proc.kill()
            proc.wait()
