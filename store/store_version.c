#include <sqlite3.h>
/* The SQLite library version the store is linked against (for `lorad version`). */
const char *lorad_store_sqlite_version(void) { return sqlite3_libversion(); }
