std = "lua54"
max_line_length = 140
max_comment_line_length = false
files["meta"] = { ignore = { "211", "212", "631", "111", "112", "113", "121", "122", "142", "143" } }
files["tests/lua"] = { max_line_length = 160 }
