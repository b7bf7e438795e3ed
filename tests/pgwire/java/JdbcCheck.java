import java.sql.*;
public class JdbcCheck {
    public static void main(String[] a) throws Exception {
        String url = a[0]; String user = a[1]; String pw = a[2];
        try (Connection c = DriverManager.getConnection(url, user, pw)) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product " + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            try (ResultSet rs = md.getSchemas()) { while (rs.next()) System.out.println("schema " + rs.getString("TABLE_SCHEM")); }
            try (ResultSet rs = md.getTables(null, "public", "%", new String[]{"TABLE"})) { while (rs.next()) System.out.println("table " + rs.getString("TABLE_NAME") + " " + rs.getString("REMARKS")); }
            try (ResultSet rs = md.getColumns(null, "public", "visits", "%")) { while (rs.next()) System.out.println("column " + rs.getString("COLUMN_NAME") + " " + rs.getString("TYPE_NAME") + " " + rs.getInt("DATA_TYPE")); }
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "visits")) { while (rs.next()) System.out.println("pk " + rs.getString("COLUMN_NAME")); }
            try (ResultSet rs = md.getCatalogs()) { while (rs.next()) System.out.println("catalog " + rs.getString(1)); }
            try (ResultSet rs = md.getImportedKeys(null, "public", "visits")) { while (rs.next()) System.out.println("fk " + rs.getString("FKCOLUMN_NAME")); }
            try (ResultSet rs = md.getExportedKeys(null, "public", "visits")) { while (rs.next()) System.out.println("ek " + rs.getString("FKCOLUMN_NAME")); }
            try (ResultSet rs = md.getIndexInfo(null, "public", "visits", false, true)) { while (rs.next()) System.out.println("index " + rs.getString("INDEX_NAME")); }
            try (ResultSet rs = md.getTypeInfo()) { int n = 0; while (rs.next()) n++; System.out.println("types " + (n > 10)); }
            try (ResultSet rs = md.getTableTypes()) { while (rs.next()) System.out.println("tabletype " + rs.getString(1)); }
            try (ResultSet rs = md.getProcedures(null, "public", "%")) { while (rs.next()) System.out.println("proc " + rs.getString(3)); }
            try (ResultSet rs = md.getFunctions(null, "public", "%")) { while (rs.next()) System.out.println("func " + rs.getString(3)); }
            try (ResultSet rs = md.getColumnPrivileges(null, "public", "visits", "%")) { while (rs.next()) System.out.println("colpriv " + rs.getString(4)); }
            try (ResultSet rs = md.getTablePrivileges(null, "public", "visits")) { while (rs.next()) System.out.println("tabpriv " + rs.getString("PRIVILEGE")); }
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT city, COUNT(*) AS n FROM visits GROUP BY city")) {
                while (rs.next()) System.out.println("row " + rs.getString(1) + " " + rs.getLong(2));
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT COUNT(*) AS n FROM visits WHERE age > ?")) {
                for (int i = 0; i < 7; i++) { ps.setInt(1, 30 + (i % 2)); try (ResultSet rs = ps.executeQuery()) { rs.next(); System.out.println("prepared " + i + " " + rs.getLong(1)); } }
            }
            try (Statement st = c.createStatement()) {
                try { st.executeQuery("SELECT * FROM visits"); } catch (SQLException e) { System.out.println("error " + e.getSQLState() + " " + e.getMessage()); }
                try (ResultSet rs = st.executeQuery("SHOW dp.budget")) { rs.next(); System.out.println("budget " + rs.getDouble(1)); }
            }
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) { st.setFetchSize(2);
                try (ResultSet rs = st.executeQuery("SELECT city, COUNT(*) FROM visits GROUP BY city")) { int n=0; while (rs.next()) n++; System.out.println("fetched " + n); }
            }
            c.rollback();
        }
    }
}
