"""The message log: every message and receipt imd stores, from the moment
the store script accepts it (an entry of ``MQ`` and of both parties'
``pending:<uid>`` in Redis) until the migrator has copied it (rows of
``message`` and ``receipt`` in MySQL).

The one place that knows the stored entry's format:

- ``lua/store_entry.lua``: the Lua snippet every store script uses to write
  an entry (the accept order, ``MQ``, both pending indexes);
  ``lua/entry_ts.lua``: its ``ts`` read in Redis;
- :mod:`imd.messagelog.entry`: the entry read back as typed values, the
  receipt's entry written, the rows the migrator inserts;
- :mod:`imd.messagelog.merge`: the one merge of a user's entries still in
  Redis with the rows read from MySQL (imd.stores.mysql reads them for a
  :class:`~imd.messagelog.merge.Selection`), each message once, with the
  furthest receipt state either side knows: ``H``, export and the
  receipts' verification.
"""
