"""The operator's tools: ``imd-admin`` (:mod:`imd.admin.console`) and the
commands it runs that are more than a few lines each: the migration queue
(:mod:`~imd.admin.mq`), the live view (:mod:`~imd.admin.top`,
:mod:`~imd.admin.top_figures`), the audit (:mod:`~imd.admin.reconcile`), the
export (:mod:`~imd.admin.export`) and the retention purge
(:mod:`~imd.admin.retention`)."""
