"""What calling a function does: admin, write, read, or unknown (judged by the policy).

PostgreSQL does not let STABLE or IMMUTABLE functions write, so every built-in declared
so is read-only (the list in ``pg_functions.txt`` is generated from the catalogue by
``scripts/gen_pg_functions.py``). A few VOLATILE built-ins only read, and are listed
here by hand. Functions with effects beyond reading rows are named below; everything
else, user-defined functions included, is unknown, which the gate judges a write
unless the configuration lists it in ``safe_functions``.
"""

from __future__ import annotations

from importlib import resources

ADMIN_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
        "pg_rotate_logfile_old", "pg_read_file", "pg_read_file_old", "pg_read_binary_file",
        "pg_stat_file", "lo_import", "lo_export", "dblink", "dblink_exec", "dblink_connect",
        "dblink_connect_u", "dblink_send_query", "pg_promote", "pg_switch_wal",
        "pg_create_restore_point", "pg_start_backup", "pg_stop_backup", "pg_backup_start",
        "pg_backup_stop", "pg_file_write", "pg_file_rename", "pg_file_unlink",
        "pg_logical_emit_message", "query_to_xml", "query_to_xmlschema",
        "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema", "table_to_xml",
        "table_to_xmlschema", "table_to_xml_and_xmlschema", "schema_to_xml",
        "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
        "database_to_xmlschema", "database_to_xml_and_xmlschema", "ts_stat",
        "pg_current_logfile", "pg_hba_file_rules", "pg_ident_file_mappings",
        "pg_show_all_file_settings", "pg_import_system_collations", "pg_export_snapshot",
        "pg_log_backend_memory_contexts", "pg_nextoid", "pg_stop_making_pinned_objects",
        "pg_extension_config_dump", "pg_drop_replication_slot", "pg_replication_slot_advance",
        "pg_wal_replay_pause", "pg_wal_replay_resume", "pg_stat_force_next_flush",
        # ts_rewrite(query, 'SELECT ...') runs the SELECT given as text (a VOLATILE
        # overload of an IMMUTABLE name: the SELECT may call a function that writes).
        "ts_rewrite",
    }
)  # fmt: skip
# Prefixes of admin function families (directory listings, stats resets, replication).
ADMIN_PREFIXES = (
    "pg_ls_", "pg_stat_reset", "binary_upgrade_", "pg_replication_origin_",
    "pg_create_", "pg_copy_", "pg_logical_slot_",
)  # fmt: skip
WRITE_FUNCTIONS = frozenset(
    {
        "nextval", "setval", "lo_create", "lo_creat", "lo_unlink", "lo_put", "lo_from_bytea",
        "lo_open", "lo_close", "lo_lseek", "lo_lseek64", "lo_truncate", "lo_truncate64",
        "lowrite", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_unlock",
        "pg_advisory_unlock_all", "pg_advisory_unlock_shared", "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_notify",
        "brin_summarize_new_values", "brin_summarize_range", "brin_desummarize_range",
        "gin_clean_pending_list",
    }
)  # fmt: skip
# VOLATILE built-ins that only read (the clock, randomness, sizes, server state).
READ_ONLY_VOLATILE = frozenset(
    {
        "clock_timestamp", "timeofday", "random", "setseed", "gen_random_uuid",
        "current_query", "currval", "lastval", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
        "pg_relation_size", "pg_table_size", "pg_indexes_size", "pg_total_relation_size",
        "pg_database_size", "pg_tablespace_size", "pg_is_in_recovery", "pg_jit_available",
        "pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_lock_status",
        "pg_notification_queue_usage", "pg_partition_ancestors", "pg_partition_tree",
        "pg_sequence_last_value", "pg_xact_status", "txid_status", "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn", "pg_last_wal_receive_lsn",
        "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp", "pg_is_wal_replay_paused",
        "pg_get_wal_replay_pause_state", "pg_collation_actual_version",
        "pg_database_collation_actual_version", "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin", "pg_last_committed_xact", "pg_stat_have_stats",
        "pg_stat_clear_snapshot", "pg_prepared_xact", "pg_get_backend_memory_contexts",
        "pg_get_shmem_allocations", "pg_get_multixact_members", "pg_control_checkpoint",
        "pg_control_init", "pg_control_recovery", "pg_control_system", "lo_get", "loread",
        "lo_tell", "lo_tell64", "pg_get_wal_resource_managers", "pg_stat_get_recovery_prefetch",
        "pg_isolation_test_session_is_blocked", "pg_show_replication_origin_status",
    }
)  # fmt: skip
_BUILTIN_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _load_builtins() -> frozenset[str]:
    text = resources.files("wardgate.policy").joinpath("pg_functions.txt").read_text()
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


# Input functions that read a value as the type an argument names by OID, running that
# type's input function and a domain's CHECK: `domain_in('3', 'touchy'::regtype, -1)`
# runs touchy's CHECK with no cast or type name in the text. STABLE, but which user code
# they run is data, so they are unknown functions (writes), like the user code itself.
TYPE_INPUTS = frozenset(
    {
        "domain_in", "domain_recv", "array_in", "array_recv", "record_in", "record_recv",
        "range_in", "range_recv", "multirange_in", "multirange_recv",
    }
)  # fmt: skip

BUILTIN_READ_ONLY = (_load_builtins() | READ_ONLY_VOLATILE) - TYPE_INPUTS


def function_class(schema: str | None, name: str) -> str | None:
    """``admin``, ``write`` or ``read`` for a built-in, None for anything else (unknown).

    Only unqualified names and the built-in schemas resolve to built-ins: a function in
    another schema is the user's, whatever its name.
    """
    if schema is not None and schema not in _BUILTIN_SCHEMAS:
        return None
    if name == "set_config":
        return "read"  # judged by the setting it changes, in policy/sql.py
    if name in ADMIN_FUNCTIONS or name.startswith(ADMIN_PREFIXES):
        return "admin"
    if name in WRITE_FUNCTIONS:
        return "write"
    if name in BUILTIN_READ_ONLY:
        return "read"
    return None
