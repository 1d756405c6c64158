-- sql.builder (Wippy's SQL page, "Query Builder"): SELECT / INSERT / UPDATE / DELETE
-- builders and conditions that write SQL text and its bind arguments the way Wippy's
-- (squirrel) does: `?` placeholders, rewritten at the end by placeholder_format; map
-- conditions with their keys sorted; a condition value that is sql.NULL is IS NULL, an array
-- is IN (...); a nil value is bound as NULL. Loaded once per VM by the sql module, which
-- passes `is_null` (whether a value is sql.NULL), `NULL` itself and `invalid` (an Invalid
-- error value from a message).
local is_null, NULL, invalid = ...
local concat, insert, sort, unpack = table.concat, table.insert, table.sort, table.unpack
local type, pairs, ipairs, select, error, setmetatable = type, pairs, ipairs, select, error, setmetatable
local getmetatable, next, pcall, tointeger = getmetatable, next, pcall, math.tointeger

local B = {}

-- A condition or expression: { sql = "...", args = {...} }, marked by its metatable.
local Sqlizer = {}
Sqlizer.__index = Sqlizer
function Sqlizer:to_sql() return self.sql, { unpack(self.args) } end
Sqlizer.__tostring = function(s) return "sqlizer: " .. s.sql end

local function sqlizer(text, args)
  return setmetatable({ sql = text, args = args or {} }, Sqlizer)
end

local function is_sqlizer(v) return type(v) == "table" and getmetatable(v) == Sqlizer end
local function is_builder(v) return type(v) == "table" and type(v.__build) == "function" end

local function append(list, more)
  for _, v in ipairs(more) do list[#list + 1] = v end
  return list
end

-- Arguments as an array, a nil as NULL (so the array has no holes).
local function pack_args(...)
  local out = {}
  for i = 1, select("#", ...) do
    local v = (select(i, ...))
    if v == nil then v = NULL end
    out[i] = v
  end
  return out
end

function B.expr(text, ...)
  if type(text) ~= "string" then error("sql.builder.expr: SQL text must be a string", 2) end
  return sqlizer(text, pack_args(...))
end

local function sorted_keys(map)
  local keys = {}
  for k in pairs(map) do
    if type(k) ~= "string" then error("sql.builder: condition keys must be column names (strings)", 3) end
    keys[#keys + 1] = k
  end
  sort(keys)
  return keys
end

local function is_array(v)
  if type(v) ~= "table" or is_sqlizer(v) then return false end
  local n = #v
  if n == 0 then return next(v) == nil end
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
  end
  return true
end

-- A map condition: `col OP ?` for each key (sorted), joined by AND.
local function map_cond(map, op, null_op, in_op)
  if type(map) ~= "table" then error("sql.builder: a condition map must be a table", 3) end
  local parts, args = {}, {}
  for _, col in ipairs(sorted_keys(map)) do
    local v = map[col]
    if is_null(v) and null_op then
      parts[#parts + 1] = col .. " " .. null_op
    elseif in_op and is_array(v) then
      if #v == 0 then
        parts[#parts + 1] = in_op == "IN" and "(1=0)" or "(1=1)"
      else
        local marks = {}
        for i, item in ipairs(v) do marks[i] = "?"; args[#args + 1] = item end
        parts[#parts + 1] = col .. " " .. in_op .. " (" .. concat(marks, ",") .. ")"
      end
    elseif is_sqlizer(v) then
      parts[#parts + 1] = col .. " " .. op .. " " .. v.sql
      append(args, v.args)
    else
      parts[#parts + 1] = col .. " " .. op .. " ?"
      args[#args + 1] = v
    end
  end
  if #parts == 0 then return sqlizer("(1=1)", {}) end
  return sqlizer(concat(parts, " AND "), args)
end

function B.eq(map) return map_cond(map, "=", "IS NULL", "IN") end
function B.not_eq(map) return map_cond(map, "<>", "IS NOT NULL", "NOT IN") end
function B.lt(map) return map_cond(map, "<") end
function B.lte(map) return map_cond(map, "<=") end
function B.gt(map) return map_cond(map, ">") end
function B.gte(map) return map_cond(map, ">=") end
function B.like(map) return map_cond(map, "LIKE") end
function B.not_like(map) return map_cond(map, "NOT LIKE") end

-- A condition argument: a Sqlizer, a map (equality), or SQL text with its arguments.
local function condition(c, ...)
  if is_sqlizer(c) then return c end
  if type(c) == "string" then return sqlizer(c, pack_args(...)) end
  if type(c) == "table" then return B.eq(c) end
  error("sql.builder: a condition must be SQL text, a table or a condition", 3)
end

local function junction(list, word)
  if type(list) ~= "table" then error("sql.builder." .. word:lower() .. "_: expects an array of conditions", 3) end
  if #list == 0 then return sqlizer(word == "AND" and "(1=1)" or "(1=0)", {}) end
  local parts, args = {}, {}
  for _, c in ipairs(list) do
    local s = condition(c)
    parts[#parts + 1] = s.sql
    append(args, s.args)
  end
  return sqlizer("(" .. concat(parts, " " .. word .. " ") .. ")", args)
end

function B.and_(list) return junction(list, "AND") end
function B.or_(list) return junction(list, "OR") end

-- Placeholder formats: how the final text's `?` are written (`??` is a literal `?`).
local function numbered(prefix)
  return function(text)
    local n, out, i = 0, {}, 1
    while i <= #text do
      local c = text:sub(i, i)
      if c == "?" then
        if text:sub(i + 1, i + 1) == "?" then
          out[#out + 1] = "?"; i = i + 2
        else
          n = n + 1; out[#out + 1] = prefix .. n; i = i + 1
        end
      else
        out[#out + 1] = c; i = i + 1
      end
    end
    return concat(out)
  end
end

local Format = {}
Format.__tostring = function(f) return "placeholder format: " .. f.name end
local tostring = tostring
local function format(name, fn) return setmetatable({ name = name, apply = fn }, Format) end
B.question = format("question", function(text) return (text:gsub("%?%?", "?")) end)
B.default_placeholder = B.question
B.dollar = format("dollar", numbered("$"))
B.at = format("at", numbered("@p"))
B.colon = format("colon", numbered(":"))

-- The executor `run_with` gives: runs the built query on a DB or a transaction handle.
local Executor = {}
Executor.__index = Executor
function Executor:to_sql() return self.builder:to_sql() end
function Executor:query()
  local text, args = self.builder:to_sql()
  if not text then return nil, args end
  return self.db:query(text, args)
end
function Executor:exec()
  local text, args = self.builder:to_sql()
  if not text then return nil, args end
  return self.db:execute(text, args)
end

-- Shared builder methods.
local Base = {}
function Base:placeholder_format(f)
  if getmetatable(f) ~= Format then error("placeholder_format: expects sql.builder.question, dollar, at or colon", 2) end
  self.format = f
  return self
end
-- The SQL text and its arguments, or nil and an Invalid error for a statement that
-- cannot be written (no table, no columns, no values).
function Base:to_sql()
  local ok, text, args = pcall(self.__build, self)
  if not ok then
    local msg = type(text) == "string" and text:gsub("^[^:]*:%d+: ", "") or tostring(text)
    return nil, invalid(msg)
  end
  return (self.format or B.question).apply(text), args
end
function Base:run_with(db)
  if db == nil then error("run_with: expects a database or transaction handle", 2) end
  return setmetatable({ builder = self, db = db }, Executor)
end
function Base:where(c, ...)
  insert(self.wheres, condition(c, ...))
  return self
end
function Base:order_by(...)
  append(self.orders, pack_args(...))
  return self
end
function Base:limit(n) self.lim = tointeger(n) or error("limit: expects an integer", 2); return self end
function Base:offset(n) self.off = tointeger(n) or error("offset: expects an integer", 2); return self end
function Base:suffix(text, ...) insert(self.suffixes, sqlizer(text, pack_args(...))); return self end
function Base:prefix(text, ...) insert(self.prefixes, sqlizer(text, pack_args(...))); return self end

local function new(kind, fields)
  local mt = { __index = function(_, k) return kind[k] or Base[k] end, __tostring = function(b) return (b:to_sql()) or "invalid statement" end }
  fields.wheres, fields.orders, fields.suffixes, fields.prefixes = {}, {}, {}, {}
  return setmetatable(fields, mt)
end

-- Pieces every statement writes the same way.
local function write_list(out, args, word, list, sep)
  if #list == 0 then return end
  local parts = {}
  for _, s in ipairs(list) do parts[#parts + 1] = s.sql; append(args, s.args) end
  out[#out + 1] = word .. concat(parts, sep)
end

local function write_tail(self, out, args)
  if #self.orders > 0 then out[#out + 1] = "ORDER BY " .. concat(self.orders, ", ") end
  if self.lim then out[#out + 1] = "LIMIT " .. self.lim end
  if self.off then out[#out + 1] = "OFFSET " .. self.off end
  write_list(out, args, "", self.suffixes, " ")
end

local function value_sql(v, args)
  if v == nil then v = NULL end
  if is_sqlizer(v) then append(args, v.args); return v.sql end
  if is_builder(v) then
    local t, a = v:__build(); append(args, a); return "(" .. t .. ")"
  end
  args[#args + 1] = v
  return "?"
end

-- SELECT
local Select = {}
function Select:from(t) self.table = t; return self end
function Select:columns(...) append(self.cols, pack_args(...)); return self end
function Select:distinct() self.is_distinct = true; return self end
local function join(word)
  return function(self, clause, ...) insert(self.joins, sqlizer(word .. " " .. clause, pack_args(...))); return self end
end
Select.join, Select.left_join, Select.right_join, Select.inner_join = join("JOIN"), join("LEFT JOIN"), join("RIGHT JOIN"), join("INNER JOIN")
function Select:group_by(...) append(self.groups, pack_args(...)); return self end
function Select:having(c, ...) insert(self.havings, condition(c, ...)); return self end
function Select:__build()
  if #self.cols == 0 then error("select statements must have at least one result column", 3) end
  local out, args = {}, {}
  write_list(out, args, "", self.prefixes, " ")
  out[#out + 1] = "SELECT" .. (self.is_distinct and " DISTINCT" or "") .. " " .. concat(self.cols, ", ")
  if self.table then out[#out + 1] = "FROM " .. self.table end
  write_list(out, args, "", self.joins, " ")
  write_list(out, args, "WHERE ", self.wheres, " AND ")
  if #self.groups > 0 then out[#out + 1] = "GROUP BY " .. concat(self.groups, ", ") end
  write_list(out, args, "HAVING ", self.havings, " AND ")
  write_tail(self, out, args)
  return concat(out, " "), args
end

function B.select(...)
  return new(Select, { cols = pack_args(...), joins = {}, groups = {}, havings = {} })
end

-- INSERT
local Insert = {}
function Insert:into(t) self.table = t; return self end
function Insert:columns(...) append(self.cols, pack_args(...)); return self end
function Insert:values(...) insert(self.rows, pack_args(...)); return self end
function Insert:options(...) append(self.opts, pack_args(...)); return self end
function Insert:select(q) self.from_select = q; return self end
function Insert:set_map(map)
  local keys = sorted_keys(map)
  local row = {}
  for i, k in ipairs(keys) do row[i] = map[k] end
  self.cols, self.rows = keys, { row }
  return self
end
function Insert:__build()
  if not self.table or self.table == "" then error("insert statements must specify a table", 3) end
  if #self.rows == 0 and not self.from_select then error("insert statements must have at least one set of values or select clause", 3) end
  local out, args = {}, {}
  if #self.prefixes > 0 then write_list(out, args, "", self.prefixes, " ") end
  local head = "INSERT " .. (#self.opts > 0 and concat(self.opts, " ") .. " " or "") .. "INTO " .. self.table
  out[#out + 1] = head
  if #self.cols > 0 then out[#out + 1] = "(" .. concat(self.cols, ",") .. ")" end
  if self.from_select then
    local t, a = self.from_select:__build()
    out[#out + 1] = t; append(args, a)
  else
    local rows = {}
    for _, row in ipairs(self.rows) do
      local marks = {}
      for i = 1, #row do marks[i] = value_sql(row[i], args) end
      rows[#rows + 1] = "(" .. concat(marks, ",") .. ")"
    end
    out[#out + 1] = "VALUES " .. concat(rows, ",")
  end
  write_list(out, args, "", self.suffixes, " ")
  return concat(out, " "), args
end

function B.insert(t)
  return new(Insert, { table = t, cols = {}, rows = {}, opts = {} })
end

-- UPDATE
local Update = {}
function Update:table(t) self.tbl = t; return self end
function Update:set(col, v) insert(self.sets, { col, v }); return self end
function Update:set_map(map)
  for _, k in ipairs(sorted_keys(map)) do insert(self.sets, { k, map[k] }) end
  return self
end
function Update:from(t) self.from_table = t; return self end
function Update:from_select(q, alias) self.from_query, self.from_alias = q, alias; return self end
function Update:__build()
  if not self.tbl or self.tbl == "" then error("update statements must specify a table", 3) end
  if #self.sets == 0 then error("update statements must have at least one Set clause", 3) end
  local out, args = {}, {}
  write_list(out, args, "", self.prefixes, " ")
  out[#out + 1] = "UPDATE " .. self.tbl
  local sets = {}
  for _, s in ipairs(self.sets) do sets[#sets + 1] = s[1] .. " = " .. value_sql(s[2], args) end
  out[#out + 1] = "SET " .. concat(sets, ", ")
  if self.from_table then
    out[#out + 1] = "FROM " .. self.from_table
  elseif self.from_query then
    local t, a = self.from_query:__build()
    out[#out + 1] = "FROM (" .. t .. ") AS " .. (self.from_alias or "t"); append(args, a)
  end
  write_list(out, args, "WHERE ", self.wheres, " AND ")
  write_tail(self, out, args)
  return concat(out, " "), args
end

function B.update(t)
  return new(Update, { tbl = t, sets = {} })
end

-- DELETE
local Delete = {}
function Delete:from(t) self.table = t; return self end
function Delete:__build()
  if not self.table or self.table == "" then error("delete statements must specify a From table", 3) end
  local out, args = {}, {}
  write_list(out, args, "", self.prefixes, " ")
  out[#out + 1] = "DELETE FROM " .. self.table
  write_list(out, args, "WHERE ", self.wheres, " AND ")
  write_tail(self, out, args)
  return concat(out, " "), args
end

function B.delete(t)
  return new(Delete, { table = t })
end

return B
