from skiplab.cli import main

main()
