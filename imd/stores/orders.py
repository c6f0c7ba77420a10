"""What ``T`` (take order) keeps in Redis.

Keys (imd.stores.keys): ``URS:<uid>`` of both parties, ``taken:<order>``,
and, for the stored ``s`` packet, those of imd.stores.messages (``MQ``,
``MQ:seq``, ``pending:<uid>``).
"""

from twisted.internet.defer import Deferred

from imd.stores.keys import Keys
from imd.stores.messages import STORE_ENTRY_LUA
from imd.stores.redis import RedisClient, Script

TAKEN_TTL = 30 * 86400

# KEYS: URS:<courier>, URS:<customer>, taken:<order>, MQ, MQ:seq,
#       pending:<courier>, pending:<customer>
# ARGV: courier, customer, s packet, taken ttl
# Friends both ways every time; the s packet is stored the first time only.
# A repeated T renews taken:<order>: that write is what a WAIT after it
# counts ([redis] min_replicas; an SADD that adds nothing is not replicated).
TAKE_ORDER = Script(STORE_ENTRY_LUA + """
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[4]) then
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  return 0
end
store_entry(KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[3])
return 1
""", "take_order")


class OrderStore:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def take_order(self, order: int, courier: int, customer: int, packet: bytes) -> Deferred:
        """Friends both ways; store the ``s`` packet the first time only.
        Fires True the first time."""
        k = self.keys
        d = self.client.run(TAKE_ORDER,
                            [k.friends(courier), k.friends(customer), k.taken(order), k.mq, k.mq_seq,
                             k.pending(courier), k.pending(customer)],
                            [courier, customer, packet, TAKEN_TTL])
        return d.addCallback(lambda reply: int(reply) == 1)
