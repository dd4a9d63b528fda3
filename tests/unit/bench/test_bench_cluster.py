"""The cluster bench's pure parts (bench/cluster.py): Redis command counts from INFO
commandstats and the report tables; and the harness's list file (tests/helpers/cluster.py).
(End to end: `python -m bench.cluster --quick`, docs/cluster.md.)"""
from bench import cluster
from tests.helpers.cluster import Node, ds_list


class FakeRedis:
    def __init__(self, stats):
        self.stats = stats

    def info(self, section):
        assert section == "commandstats"
        return self.stats


def test_commandstats_leaves_out_the_bench_own_commands():
    c = FakeRedis({"cmdstat_smembers": {"calls": 10, "usec": 5}, "cmdstat_hmget": {"calls": 10},
                   "cmdstat_config|resetstat": {"calls": 1}, "cmdstat_info": {"calls": 2}})
    assert cluster.commandstats(c) == {"smembers": 10, "hmget": 10}


def result(topology, clean_rate, nodes):
    steps = [{"rate": 100, "clean": True, "cpu_pct": {n: 10.0 for n in nodes}},
             {"rate": clean_rate, "clean": True, "cpu_pct": {n: 20.0 for n in nodes}},
             {"rate": clean_rate * 2, "clean": False, "cpu_pct": {n: 90.0 for n in nodes}}]
    return {"server": "kamailio", "topology": topology, "max_clean_rate": clean_rate, "steps": steps,
            "redis_ops": {"register_new": {"sadd": 4, "hmset": 1}, "register_refresh": {},
                          "calls_10": {"smembers": 10}}}


def test_markdown_shows_cpu_at_the_max_clean_rate_and_the_redis_commands():
    md = cluster.markdown([result("one", 300, ["proxya", "redis"]),
                           result("three", 400, ["dispatcher", "proxya", "proxyb", "redis"])])
    assert "| kamailio | one | 300 | proxya 20.0, redis 20.0 | proxya 0.67, redis 0.67 |" in md
    assert ("| kamailio | three | 400 | dispatcher 20.0, proxya 20.0, proxyb 20.0, redis 20.0 "
            "| dispatcher 0.50, proxya 0.50, proxyb 0.50, redis 0.50 |") in md
    assert "| kamailio | one | hmset 1, sadd 4 / - / smembers 10 |" in md


def test_ds_list_is_dispatcher_file_format(tmp_path):
    nodes = [Node("asyncd", "proxya", "p.cfg", 5071, {}, str(tmp_path)),
             Node("asyncd", "proxyb", "p.cfg", 5072, {}, str(tmp_path))]
    # dispatch.c ds_load_list: setid, destination URI, flags, priority, attributes
    assert ds_list(nodes) == ("1 sip:127.0.0.1:5071 0 0 duid=proxya\n"
                              "1 sip:127.0.0.1:5072 0 0 duid=proxyb\n")
