-- Works through jobs first..last, reporting progress to its supervisor; crashes at random.
local function main(supervisor, first, last)
    for job = first, last do
        time.sleep("2ms")
        if math.random() < 0.3 then
            error("job " .. job .. " hit a bad record", 0)
        end
        process.send(supervisor, "progress", job)
    end
    return "finished"
end

return { main = main }
